"""`python -m bench.study --quick`: the study harness on its smoke plan (tiny data, model and runs).

One module-scoped study folder goes through what the real study does across invocations: every run is
stopped at update 4 (checkpointed), the next invocation resumes each from that checkpoint and finishes it,
and a third invocation finds nothing left to do.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch_util import REPO, launcher_env

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba-de-en"
QUICK_RUNS = {"tiny-admin": 12, "plateau-admin-logn-s1": 8}
RESULT_FIELDS = {
    "name", "group", "shape", "status", "settings", "give_up", "updates_done", "dev_loss", "train_loss",
    "best_dev_loss", "best_dev_update", "best_dev_minute", "last_dev_loss", "last_fifth", "longest_flat",
    "train_minutes", "diverged", "stalled", "rollbacks", "bleu", "chrf", "bleu_signature", "chrf_signature",
    "test_lines", "beam", "averaged_updates", "translate_seconds", "segments", "wall_minutes", "score_minutes",
    "cpu_model", "cpu_count", "omp_num_threads", "python", "torch", "commit", "finished_utc", "omega_moved"}


def slow_env(seconds: str) -> dict:
    """The launcher's environment with every training update slowed by ``seconds`` (no number changes)."""
    env = launcher_env()
    env.update(ADMIN_DS_TEST_UPDATE_SLEEP=seconds,
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "scripts" / "slow_updates"), env["PYTHONPATH"]]))
    return env


def study(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "bench.study", "--quick", "--study", str(folder), *extra],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def stopped_then_finished(tmp_path_factory):
    """(folder, metrics rows at the stop, the finishing invocation's output)."""
    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"needs Tatoeba de-en at {TATOEBA} (the shared data folder beside the checkout)")
    folder = tmp_path_factory.mktemp("study")
    study(folder, "--stop-at-update", "4")
    at_stop = {name: (folder / "runs" / name / "metrics.jsonl").read_text() for name in QUICK_RUNS}
    finishing = study(folder)
    return folder, at_stop, finishing.stdout


@pytest.mark.slow
def test_stopped_runs_resume_from_their_checkpoint(stopped_then_finished):
    folder, at_stop, _ = stopped_then_finished
    for name, updates in QUICK_RUNS.items():
        state = json.loads((folder / "runs" / name / "study_state.json").read_text())
        spans = [(s["from_update"], s["to_update"]) for s in state["segments"]]
        assert spans == [(0, 4), (4, updates)], (name, spans)
        rows_after = (folder / "runs" / name / "metrics.jsonl").read_text()
        # The first segment's rows are kept as they were: the second went on from them, not from scratch.
        assert rows_after.startswith(at_stop[name]) and len(rows_after) > len(at_stop[name]), name


@pytest.mark.slow
def test_results_have_every_field_and_no_paths(stopped_then_finished):
    folder, _, _ = stopped_then_finished
    for name, updates in QUICK_RUNS.items():
        text = (folder / "results" / f"{name}.json").read_text()
        result = json.loads(text)
        assert set(result) == RESULT_FIELDS, set(result) ^ RESULT_FIELDS
        assert result["status"] == "finished" and result["updates_done"] == updates
        assert [step for step, _ in result["dev_loss"]][-1] == updates
        assert all(math.isfinite(loss) for _, loss in result["dev_loss"])
        assert result["best_dev_loss"] == min(loss for _, loss in result["dev_loss"])
        assert result["last_fifth"]["to_update"] == updates and result["wall_minutes"] > 0
        assert result["cpu_model"] and isinstance(result["diverged"], bool)
        moved = result["omega_moved"]  # both quick runs are admin: ω trained from its start
        assert moved["update"] == updates and 0 < moved["mean_abs"] <= moved["max_abs"] < 1, (name, moved)
        assert '"/' not in text and str(folder) not in text, f"{name}: an absolute path in the result"
        kept = sorted(p.name for p in (folder / "runs" / name).glob("global_step*"))
        assert kept == [f"global_step{updates}"], (name, kept)  # older checkpoints pruned once finished
    scored = json.loads((folder / "results" / "tiny-admin.json").read_text())
    assert scored["test_lines"] == 12 and "tok:13a" in scored["bleu_signature"] and scored["chrf"] >= 0
    assert scored["averaged_updates"] == [8, 12] and scored["beam"] == 2
    probe = json.loads((folder / "results" / "plateau-admin-logn-s1.json").read_text())
    assert probe["bleu"] is None and probe["settings"]["omega_init"] == "logn" and probe["settings"]["lr"] == 2e-3


@pytest.mark.slow
def test_a_finished_study_skips_its_runs_and_summarises(stopped_then_finished):
    folder, _, _ = stopped_then_finished
    before = {p.name: p.read_text() for p in (folder / "results").glob("*.json")}
    again = study(folder)
    assert all(f"{name}: skipped" in again.stdout for name in QUICK_RUNS), again.stdout
    assert "training" not in again.stdout
    assert {p.name: p.read_text() for p in (folder / "results").glob("*.json")} == before
    listing = study(folder, "--list").stdout
    assert all(line.split()[-1] == "done" for line in listing.splitlines()[1:1 + len(QUICK_RUNS)]), listing
    study(folder, "--summary")
    summary = (folder / "results" / "summary.md").read_text()
    assert "| tiny-admin | admin | profile | 1 | 12 |" in summary and "plateau-admin-logn-s1" in summary
    for png in ("curves.png", "plateau.png"):
        assert (folder / "results" / png).read_bytes().startswith(b"\x89PNG"), png


def test_a_run_without_omega_reports_no_movement(tmp_path):
    from bench.study.runner import omega_movement

    assert omega_movement(tmp_path) is None


def test_a_bad_run_name_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.study", "--quick", "--study", str(tmp_path), "--only",
                           "no-such-run", "--list"], cwd=REPO, env=launcher_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no run named 'no-such-run'" in proc.stderr, proc.stderr[-2000:]


def test_the_full_plan_is_what_the_study_asks_for():
    from bench.study.plan import FULL_PLAN, load_plan

    plan = load_plan(FULL_PLAN)
    study_runs = [run for run in plan.runs if run.group == "study"]
    for shape in ("shallow", "deep"):
        runs = [run for run in study_runs if run.shape == shape]
        assert len({run.updates for run in runs}) == 1 and runs[0].updates >= 2600, shape
    shallow = {run.settings["residual"] for run in study_runs if run.shape == "shallow"}
    assert shallow == {"admin", "pre-ln", "post-ln"}
    deep = sorted((r.settings["residual"], r.settings["omega_init"], r.settings["seed"])
                  for r in study_runs if r.shape == "deep")
    assert deep == [("admin", "logn", 1), ("admin", "logn", 2), ("admin", "profile", 1), ("admin", "profile", 2),
                    ("post-ln", "profile", 1), ("pre-ln", "profile", 1), ("pre-ln", "profile", 2)]
    for run in study_runs:
        s = run.settings
        assert (s["lr"], s["warmup_updates"], s["label_smoothing"]) == (1e-3, 500, 0.1), run.name
        assert s["dropout"] == s["attention_dropout"] == s["activation_dropout"] == 0.1, run.name
        assert s["beam"] == 5 and run.score, run.name
    assert plan.data["vocab_size"] == 8000 and not plan.data.get("train_lines") and not plan.data.get("test_lines")


def test_give_up_rules_stop_a_stalled_run_and_not_a_training_one(tmp_path):
    from bench.study.runner import gives_up

    never_left = {"at_update": 400, "if_best_dev_loss_above": 6.0}
    flat = {"at_update": 600, "since_update": 300, "if_best_fell_less_than": 0.02}

    def run_with(curve):
        rows = [{"step": step, "valid_loss": loss} for step, loss in curve]
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return tmp_path

    at_unigram = run_with([(100, 6.5), (200, 6.4), (300, 6.35), (400, 6.33), (500, 6.3), (600, 6.3)])
    assert gives_up(never_left, at_unigram) and gives_up(flat, at_unigram)
    # a little below the unigram loss and flat: only the flat-stretch rule catches it
    below = run_with([(100, 7.0), (200, 6.05), (300, 5.95), (400, 5.95), (500, 5.90), (600, 5.85)])
    assert not gives_up(never_left, below) and gives_up(flat, below)
    # 5.95 -> 5.80 is a fall of 2.5%: still training; so is a run falling fast
    assert not gives_up(flat, run_with([(100, 7.0), (300, 5.95), (600, 5.80)]))
    assert not gives_up(flat, run_with([(100, 6.6), (300, 5.2), (600, 4.5), (700, 9.0)]))
    # a validation after at_update does not count: the rule is read at its update
    assert gives_up(flat, run_with([(100, 6.6), (300, 5.95), (600, 5.9), (700, 4.0)]))


@pytest.mark.parametrize("give_up, problem", [
    ({"at_update": 800}, "needs an integer at_update and"),
    ({"at_update": "800", "if_best_dev_loss_above": 6.0}, "needs an integer at_update and"),
    ({"at_update": 800, "if_best_fell_less_than": 0.02}, "needs a since_update before its at_update"),
    ({"at_update": 800, "since_update": 900, "if_best_fell_less_than": 0.02}, "needs a since_update before"),
    ([{"at_update": 800, "if_best_dev_loss_above": 6.0}, {"at_update": 800, "if_best_dev_loss_above": 5.0}],
     "two give_up rules at the same update"),
    ({"at_update": 10 ** 6, "if_best_dev_loss_above": 6.0}, "must come before its last update"),
])
def test_a_bad_give_up_rule_is_one_clear_error(tmp_path, give_up, problem):
    from admin_ds.errors import UserError
    from bench.study.plan import QUICK_PLAN, load_plan

    plan = json.loads(QUICK_PLAN.read_text())
    plan["runs"][0]["give_up"] = give_up
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(UserError, match=problem):
        load_plan(tmp_path / "plan.json")


def test_deep_post_ln_gives_up_at_the_unigram_loss_or_on_a_flat_stretch():
    from bench.study.plan import FULL_PLAN, load_plan

    rules = load_plan(FULL_PLAN).run("deep-post-ln").give_up
    assert [rule["at_update"] for rule in rules] == [800, 1200]
    assert all(not run.give_up for run in load_plan(FULL_PLAN).runs if run.settings["residual"] != "post-ln")


def test_omega_probes_pass_their_learning_rate_scale_and_the_other_runs_do_not():
    from bench.study.plan import FULL_PLAN, load_plan

    plan = load_plan(FULL_PLAN)
    frozen = plan.run("plateau-admin-omega-frozen-s1").train_flags()
    assert frozen[frozen.index("--omega-lr-scale") + 1] == "0.0"
    assert plan.run("plateau-admin-logn-frozen-s2").train_flags()[-2:] == ["--omega-lr-scale", "0.0"]
    # Runs that do not ask keep the default (ω trained like every weight) and their settings as before.
    probes = ("plateau-admin-omega-frozen", "plateau-admin-omega-lr0.1", "plateau-admin-logn-frozen")
    others = [run for run in plan.runs if not run.name.startswith(probes)]
    assert len(others) == len(plan.runs) - 9
    assert all("--omega-lr-scale" not in run.train_flags() and "omega_lr_scale" not in run.settings
               for run in others)


def test_the_radam_probe_names_its_optimizer_and_a_config_that_lets_it(tmp_path):
    from admin_ds.errors import UserError
    from bench.study.plan import FULL_PLAN, load_plan

    plan = load_plan(FULL_PLAN)
    radam = plan.run("plateau-admin-radam-s2")
    flags = radam.train_flags()
    assert flags[flags.index("--optimizer") + 1] == "radam"
    assert radam.deepspeed_config() == "ds_configs/cpu_torchoptim_bf16.json"
    others = [run for run in plan.runs if not run.name.startswith("plateau-admin-radam")]
    assert len(others) == len(plan.runs) - 3
    assert all("--optimizer" not in run.train_flags() and run.deepspeed_config() == "ds_configs/cpu_bf16.json"
               for run in others)
    bad = json.loads(FULL_PLAN.read_text())
    bad["runs"] = [{"name": "x", "group": "plateau", "shape": "deep", "residual": "admin", "optimizer": "sgd"}]
    (tmp_path / "plan.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="optimizer must be one of adam, adamw, radam"):
        load_plan(tmp_path / "plan.json")


def test_a_run_whose_settings_changed_is_not_resumed(tmp_path):
    from admin_ds.errors import UserError
    from bench.study.plan import QUICK_PLAN, load_plan
    from bench.study.runner import STATE, train_segment

    run = load_plan(QUICK_PLAN).run("tiny-admin")
    (tmp_path / STATE).write_text(json.dumps({"segments": [], "settings": {**run.settings, "lr": 5e-4}}))
    with pytest.raises(UserError, match="started with other settings"):
        train_segment(run, tmp_path / "data", tmp_path, run.updates, None)


@pytest.mark.slow
def test_a_budget_too_short_to_train_stops_cleanly(tmp_path):
    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"needs Tatoeba de-en at {TATOEBA} (the shared data folder beside the checkout)")
    proc = study(tmp_path, "--budget-minutes", "0.3")  # less than scoring (0.2) + the stop margin + 0.05
    assert "stopped before the budget ends" in proc.stdout and "training" not in proc.stdout, proc.stdout
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "results").glob("*.json"))


def test_a_run_held_by_another_study_is_left_to_it(tmp_path):
    """Two invocations on one folder share the queue: a run whose lock is held is skipped, not trained twice."""
    import fcntl

    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"needs Tatoeba de-en at {TATOEBA} (the shared data folder beside the checkout)")
    sys.path.insert(0, str(REPO))
    from bench.study.plan import QUICK_PLAN, load_plan

    names = [run.name for run in load_plan(QUICK_PLAN).runs]
    (tmp_path / "locks").mkdir()
    held = [open(tmp_path / "locks" / f"{name}.lock", "w") for name in names]
    for handle in held:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    proc = study(tmp_path)
    for handle in held:
        handle.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("taken by another bench.study") == len(names), proc.stdout
    assert "training" not in proc.stdout and not (tmp_path / "runs").exists()


def test_curve_fields_on_a_made_up_run():
    from bench.study.curves import last_fifth_fall, longest_flat, outcome, training_minutes

    # dev loss falls, sits near 5.6 from update 100 to 250, then falls again: a 150-update plateau
    curve = [[50, 6.2], [100, 5.65], [150, 5.62], [200, 5.66], [250, 5.60], [300, 5.0]]
    assert longest_flat(curve) == {"updates": 150, "from_update": 100, "to_update": 250, "dev_loss": 5.65}
    assert last_fifth_fall(curve, 300) == {"from_update": 200, "to_update": 300, "fall": 0.66,
                                           "relative_fall": round(0.66 / 5.66, 4)}
    # a second process (a resumed run) restarts elapsed_s: its minutes add to the first one's
    rows = [{"step": 10, "loss": 9.0, "elapsed_s": 60}, {"step": 20, "loss": 8.0, "elapsed_s": 120},
            {"step": 30, "loss": 7.0, "elapsed_s": 30}]
    assert training_minutes(rows) == [(10, 1.0), (20, 2.0), (30, 2.5)]
    assert outcome(rows, [[10, 6.4], [20, 6.3], [30, 6.2]]) == {"diverged": False, "stalled": True, "rollbacks": 0}
    assert outcome(rows, curve)["stalled"] is False
    assert outcome(rows + [{"step": 40, "loss": float("nan"), "elapsed_s": 40}], curve)["diverged"] is True


def test_the_settings_table_counts_the_seeds_that_sat_on_a_plateau():
    from bench.study.curves import longest_flat, sat_on_plateau, still_on_plateau
    from bench.study.report import plateau_settings_table

    plateaued = [[50, 6.2], [100, 5.65], [150, 5.62], [200, 5.66], [250, 5.60], [300, 5.0]]
    falling = [[50, 6.2], [100, 5.6], [150, 5.4], [200, 5.2], [250, 5.1], [300, 4.9]]
    stuck = [[50, 6.4], [100, 6.38], [150, 6.37], [200, 6.37], [250, 6.36], [300, 6.36]]
    assert sat_on_plateau(longest_flat(plateaued), 5.0)
    assert not sat_on_plateau(longest_flat(falling), 4.9)
    # flat to the end is a stall, not a plateau the run left
    assert not sat_on_plateau(longest_flat(stuck), 6.36)
    assert still_on_plateau(longest_flat(stuck), 6.36) and not still_on_plateau(longest_flat(plateaued), 5.0)
    # flat for 100 updates, then a crawl of 0.09 below it: not left (RAdam's seed 1 in the probes)
    crawling = [[50, 6.9], [100, 5.88], [125, 5.78], [150, 5.78], [200, 5.78], [225, 5.75], [250, 5.67],
                [300, 5.69]]
    flat = longest_flat(crawling)
    assert not sat_on_plateau(flat, 5.69) and still_on_plateau(flat, 5.69)

    def probe(name, seed, curve):
        return {"name": f"{name}-s{seed}", "settings": {"seed": seed}, "dev_loss": curve,
                "longest_flat": longest_flat(curve), "last_dev_loss": curve[-1][1]}

    probes = [probe("plateau-admin", 1, plateaued), probe("plateau-admin", 2, falling),
              probe("plateau-pre-ln", 1, falling), probe("plateau-post-ln", 1, stuck),
              probe("plateau-radam", 1, crawling)]
    table = plateau_settings_table(probes).splitlines()
    assert table[2] == ("| plateau-admin | 1, 2 | 5.62 (5.60-5.65) | 5.51 (5.40-5.62) | 5.43 (5.20-5.66) "
                        "| 4.95 (4.90-5.00) | 1 of 2 (seed 1) | 0 of 2 |")
    assert table[3] == "| plateau-pre-ln | 1 | 5.60 | 5.40 | 5.20 | 4.90 | 0 of 1 | 0 of 1 |"
    assert table[4] == "| plateau-post-ln | 1 | 6.38 | 6.37 | 6.37 | 6.36 | 0 of 1 | 1 of 1 |"
    assert table[5].endswith("| 0 of 1 | 1 of 1 |") and "within 5%" in table[0]


def test_the_paper_table_puts_each_schemes_bleu_beside_the_papers():
    from bench.study.report import SCHEMES, paper_table

    def result(name, residual, seed, bleu, status="finished", omega="profile", updates=2600):
        return {"name": name, "shape": "deep", "status": status, "bleu": bleu, "updates_done": updates,
                "diverged": False, "stalled": False,
                "settings": {"residual": residual, "omega_init": omega, "seed": seed, "encoder_layers": 36,
                             "decoder_layers": 12, "d_model": 128}}

    study = [result("deep-post-ln", "post-ln", 1, None, status="gave_up", updates=1200),
             result("deep-pre-ln-s1", "pre-ln", 1, 20.0), result("deep-pre-ln-s2", "pre-ln", 2, 21.0),
             result("deep-admin-s1", "admin", 1, 22.5)]
    lines = paper_table(study).splitlines()
    assert lines[2] == "| WMT14 En-De 6L-6L (paper) | WMT14 newstest2014 | 27.80 | 27.27 | 27.90 | - |"
    assert "| WMT14 En-Fr 60L-12L (paper) | WMT14 newstest2014 | diverged | 43.10 | 43.80 | - |" in lines
    assert lines[-1] == ("| 36L-12L d=128 (ours) | Tatoeba de-en test | gave up at update 1200 "
                         "| 20.50 (20.00-21.00) (2 seeds) | 22.50 | not run yet |")
    planned = {("deep", scheme) for scheme in SCHEMES if scheme != ("admin", "logn")}
    assert paper_table(study, planned).splitlines()[-1].endswith("| 22.50 | not in the plan |")
    planned.add(("deep", ("admin", "logn")))
    assert paper_table(study, planned).splitlines()[-1].endswith("| 22.50 | not run yet |")


@pytest.mark.slow
def test_a_stop_signal_checkpoints_the_run_and_the_next_invocation_resumes_it(tmp_path):
    """SIGTERM to the study mid-training: the trainer saves and exits 75, so does the study; the run then
    resumes from that checkpoint. Every update sleeps 0.5 s (tests/scripts/slow_updates) so that the signal
    lands while the run trains."""
    import signal
    import time

    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"needs Tatoeba de-en at {TATOEBA} (the shared data folder beside the checkout)")
    env = slow_env("0.5")
    command = [sys.executable, "-m", "bench.study", "--quick", "--study", str(tmp_path), "--only", "tiny-admin"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "tiny-admin" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and '"loss"' in metrics.read_text()) and proc.poll() is None:
        assert time.monotonic() < deadline, "training never logged a row"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-2000:] + err[-2000:]
    state = json.loads((tmp_path / "runs" / "tiny-admin" / "study_state.json").read_text())
    stopped_at = state["segments"][-1]["to_update"]
    assert state["segments"][-1]["exit_code"] == 75 and 0 < stopped_at < QUICK_RUNS["tiny-admin"], state
    assert not (tmp_path / "results" / "tiny-admin.json").exists()
    study(tmp_path, "--only", "tiny-admin")
    state = json.loads((tmp_path / "runs" / "tiny-admin" / "study_state.json").read_text())
    assert state["segments"][-1]["from_update"] == stopped_at and state["segments"][-1]["exit_code"] == 0
    assert json.loads((tmp_path / "results" / "tiny-admin.json").read_text())["updates_done"] == 12


@pytest.mark.slow
def test_a_budget_stops_training_checkpointed_and_the_next_invocation_resumes(tmp_path):
    """With updates slowed to 4 s, a 0.75-minute budget ends mid-training (or, on a crowded machine, before
    the first update): the study exits 0 without a result, and the next invocation finishes the run."""
    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"needs Tatoeba de-en at {TATOEBA} (the shared data folder beside the checkout)")
    env = slow_env("4")
    command = [sys.executable, "-m", "bench.study", "--quick", "--study", str(tmp_path), "--only", "tiny-admin",
               "--budget-minutes", "0.75"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "stopped before the budget ends" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    state = json.loads((tmp_path / "runs" / "tiny-admin" / "study_state.json").read_text())
    stopped = state["segments"][-1]
    assert stopped["exit_code"] in (75, -15) and stopped["to_update"] < QUICK_RUNS["tiny-admin"], state
    assert not (tmp_path / "results" / "tiny-admin.json").exists()
    study(tmp_path, "--only", "tiny-admin")
    state = json.loads((tmp_path / "runs" / "tiny-admin" / "study_state.json").read_text())
    assert state["segments"][-1]["from_update"] == stopped["to_update"] and state["segments"][-1]["exit_code"] == 0
    assert json.loads((tmp_path / "results" / "tiny-admin.json").read_text())["updates_done"] == 12
