"""Running one study run: train (resuming from its checkpoint), average, score, write its result.

A run lives in ``STUDY/runs/NAME`` (the trainer's save directory: checkpoints, metrics.jsonl, train.log,
and ``study_state.json``: the harness's record of every training segment). Training is the real
``admin-ds train``, which resumes bit-exactly from ``latest``; so a stopped run trained again continues where
its last checkpoint left it. The result goes to ``RESULTS/NAME.json`` only when the run is finished, and its
presence is what makes a later invocation skip the run.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from admin_ds.checkpoints.rundir import latest_tag, step_dirs, step_of
from admin_ds.errors import UserError
from admin_ds.io import write_json_atomic
from bench.study.curves import read_rows, summarise
from bench.study.plan import Run

REPO = Path(__file__).resolve().parents[2]
STATE = "study_state.json"
AVERAGED = "averaged"
# Padded source tokens per decoding batch, as the CPU recipe scores.
DECODE_TOKENS = 6000


# ``admin-ds train``'s exit status after a stop signal: checkpointed, to be resumed (docs/contracts.md).
EXIT_STOPPED = 75


class StopRequest:
    """A stop signal to the study (SIGTERM, SIGUSR1, SIGHUP): passed on to the training process as SIGTERM
    (it saves and exits with EXIT_STOPPED), and remembered so that no new run or scoring starts."""

    signal: Optional[int] = None
    child: Optional[subprocess.Popen] = None

    def handle(self, signum, _frame) -> None:
        self.signal = signum
        self.stop_child()

    def stop_child(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def catch(self) -> None:
        for name in ("SIGTERM", "SIGUSR1", "SIGHUP"):
            signal.signal(getattr(signal, name), self.handle)


STOP = StopRequest()


@dataclass
class Budget:
    """Wall-clock minutes this invocation may still spend (None: no limit)."""

    minutes: Optional[float]
    started: float = 0.0

    def __post_init__(self):
        self.started = time.monotonic()

    def left(self) -> Optional[float]:
        if self.minutes is None:
            return None
        return self.minutes - (time.monotonic() - self.started) / 60.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def updates_done(run_dir: Path) -> int:
    tag = latest_tag(run_dir) if run_dir.is_dir() else None
    return (step_of(tag) or 0) if tag else 0


def read_state(run_dir: Path) -> dict:
    import json

    path = run_dir / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"segments": []}


def train_segment(run: Run, data: Path, run_dir: Path, until: int, max_minutes: Optional[float]) -> dict:
    """Train ``run`` up to update ``until``, from its checkpoint if it has one, and for at most ``max_minutes``:
    then it gets SIGTERM, finishes its update, saves and exits with EXIT_STOPPED (the trainer's own
    --max-minutes would look at its clock only every --log-interval updates, minutes apart at depth);
    records the segment in study_state.json. Returns the segment."""
    start_update = updates_done(run_dir)
    state = read_state(run_dir)
    if state.get("settings", run.settings) != run.settings:
        raise UserError(f"run {run.name} was started with other settings than the plan's now; give the changed "
                        f"run a new name, or delete its run directory to start it again")
    argv = [sys.executable, "-m", "admin_ds", "train", "--data", str(data), "--save-dir", str(run_dir),
            *run.train_flags(), "--max-steps", str(until), "--no-tensorboard"]
    config = run.deepspeed_config()
    if config:
        argv += ["--deepspeed_config", str(REPO / config)]
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run_dir / "train.log", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        STOP.child = proc
        timer = None
        if max_minutes is not None:
            timer = threading.Timer(60.0 * max_minutes, STOP.stop_child)
            timer.start()
        try:
            proc.wait()
        finally:
            STOP.child = None
            if timer is not None:
                timer.cancel()
    segment = {"from_update": start_update, "to_update": updates_done(run_dir),
               "seconds": round(time.perf_counter() - started, 1), "exit_code": proc.returncode}
    state["settings"] = run.settings
    state["segments"].append(segment)
    write_json_atomic(run_dir / STATE, state)
    # -SIGTERM: the signal came before the trainer could catch it (still importing): nothing to save yet
    if proc.returncode not in (0, EXIT_STOPPED, -signal.SIGTERM) and not _gave_up_diverged(run_dir):
        tail = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"training {run.name} failed (exit {proc.returncode}); the end of its train.log:\n{tail}")
    return segment


def _gave_up_diverged(run_dir: Path) -> bool:
    """The trainer stops with an error after its rollbacks are used up: an outcome, not a harness failure."""
    return any("rollback" in row for row in read_rows(run_dir / "metrics.jsonl"))


def averaged_checkpoints(run: Run, run_dir: Path) -> list[Path]:
    """The newest ``average_last`` checkpoints on the save grid (a checkpoint written when a budget ran out
    falls between grid points and would weigh the average towards the end)."""
    every = int(run.settings["save_interval"])
    on_grid = [p for p in step_dirs(run_dir) if step_of(p.name) % every == 0 or step_of(p.name) == run.updates]
    return on_grid[-int(run.settings["average_last"]):]


def score_run(run: Run, run_dir: Path, test: tuple[list[str], list[str]]) -> dict:
    """Average the last checkpoints and score them on the test text: BLEU and chrF with signatures."""
    from admin_ds.checkpoints.average import average_checkpoints
    from admin_ds.inference.config import DecodingConfig
    from admin_ds.inference.scoring import translate_and_score

    paths = averaged_checkpoints(run, run_dir)
    average_checkpoints(paths, run_dir / AVERAGED, force=True)
    decoding = DecodingConfig(beam=int(run.settings["beam"]), device="cpu", max_tokens=DECODE_TOKENS)
    result, hypotheses = translate_and_score(str(run_dir / AVERAGED), decoding, *test)
    (run_dir / "test.hyp").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    return {"bleu": round(result["bleu"], 2), "chrf": round(result["chrf"], 2),
            "bleu_signature": result["signature"], "chrf_signature": result["chrf_signature"],
            "test_lines": result["n_sentences"], "beam": decoding.beam,
            "averaged_updates": [step_of(p.name) for p in paths], "translate_seconds": result["translate_seconds"]}


NOT_SCORED = {"bleu": None, "chrf": None, "bleu_signature": None, "chrf_signature": None, "test_lines": 0,
              "beam": None, "averaged_updates": [], "translate_seconds": None}


def gives_up(rule: dict, run_dir: Path) -> bool:
    """One of the plan's early stops for a run expected to fail (deep Post-LN), checked at update
    ``at_update``: its best dev loss is still above ``if_best_dev_loss_above`` (it never left the unigram
    loss), or it fell by less than the fraction ``if_best_fell_less_than`` since update ``since_update`` (a
    flat stretch a little below it). A rule gives one condition or both; either stops the run."""
    curve = [(row["step"], row["valid_loss"]) for row in read_rows(run_dir / "metrics.jsonl")
             if "valid_loss" in row and row["step"] <= rule["at_update"]]
    if not curve:
        return False
    best = min(loss for _, loss in curve)
    if "if_best_dev_loss_above" in rule and best > rule["if_best_dev_loss_above"]:
        return True
    before = [loss for step, loss in curve if step <= rule.get("since_update", -1)]
    return ("if_best_fell_less_than" in rule and bool(before)
            and best > min(before) * (1.0 - rule["if_best_fell_less_than"]))


def result_of(run: Run, run_dir: Path, status: str, scores: dict, score_seconds: float) -> dict:
    """The result JSON of a finished run (no paths: the run is named, the machine described)."""
    state = read_state(run_dir)
    train_seconds = sum(segment["seconds"] for segment in state["segments"])
    return {
        "name": run.name, "group": run.group, "shape": run.shape, "status": status,
        "settings": run.settings, "give_up": list(run.give_up) or None, "updates_done": updates_done(run_dir),
        **summarise(run_dir / "metrics.jsonl", min(run.updates, updates_done(run_dir))),  # gave up: its own fifth
        "omega_moved": omega_movement(run_dir),
        **scores,
        "segments": state["segments"],
        "wall_minutes": round((train_seconds + score_seconds) / 60.0, 2),
        "score_minutes": round(score_seconds / 60.0, 2),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(), "torch": _torch_version(), "commit": _commit(),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def omega_movement(run_dir: Path) -> Optional[dict]:
    """How far ω moved in training: each sublayer's mean ω at the ``latest`` checkpoint (its client state,
    read from the fp32 masters) against its start (``omega.profile``, written by the hook before update 1).
    ``max_abs`` and ``mean_abs`` over the sublayers, ``max_relative`` the largest change over its start;
    None for a run without ω. Not ``load_model``: a one-process bf16 run (ZeRO-0) saves its bf16 working
    weights as the module, whose rounding (up to 0.016 near ω = 4) is as large as the movement measured."""
    from admin_ds.checkpoints.pickles import torch_load
    from admin_ds.checkpoints.zero import model_states_file
    from admin_ds.model.omega import OmegaProfile

    start_file, tag = run_dir / "omega.profile", latest_tag(run_dir)
    if not start_file.is_file() or tag is None:
        return None
    states_file = model_states_file(run_dir / tag)
    text = torch_load(states_file).get("omega") if states_file else None
    if not text:
        return None
    start = OmegaProfile.read(start_file).to_tensor()
    change = OmegaProfile.from_text(text, f"{states_file} client state").to_tensor() - start
    return {"update": step_of(tag), "max_abs": round(float(change.abs().max()), 6),
            "mean_abs": round(float(change.abs().mean()), 6),
            "max_relative": round(float((change.abs() / start).max()), 6)}


def prune_finished(run_dir: Path) -> None:
    """A finished run needs no optimizer states to resume from: keep the checkpoint ``latest`` names (and the
    averaged export), drop the older ones (150-180 MB each at the study's shapes)."""
    keep = latest_tag(run_dir)
    for path in step_dirs(run_dir):
        if path.name != keep:
            shutil.rmtree(path)


def _torch_version() -> str:
    import torch

    return torch.__version__


def _commit() -> Optional[str]:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None
