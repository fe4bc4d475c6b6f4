"""``python -m bench.study``: the study of trained models (post-ln / pre-ln / admin at two depths) and the
plateau probes, from the plan in bench/study_plan.json, resumable across invocations (docs/study.md).

    python -m bench.study --list                        # the plan, each run's status and estimated minutes
    python -m bench.study --budget-minutes 55 --commit  # run what is left for 55 minutes, commit each result
    python -m bench.study --only deep-admin-s1          # one run
    python -m bench.study --group plateau               # the plateau probes only
    python -m bench.study --summary                     # the markdown table and the curves figure
    python -m bench.study --quick                       # the smoke plan (tiny data and model; the tests)

Finished runs (a result file in the results folder) are skipped; an unfinished one resumes from its last
checkpoint. ``--budget-minutes`` stops training early enough to checkpoint (and, where the time allows,
score) before the budget ends; SIGTERM (or SIGUSR1, SIGHUP) makes the training process checkpoint and the
study exit with status 75. The next invocation carries on.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from admin_ds.errors import UserError
from admin_ds.io import write_json_atomic
from bench.study.plan import FULL_PLAN, QUICK_PLAN, Plan, Run, load_plan
from bench.study.runner import (
    EXIT_STOPPED,
    NOT_SCORED,
    REPO,
    STOP,
    Budget,
    gives_up,
    prune_finished,
    result_of,
    score_run,
    train_segment,
    updates_done,
)

TATOEBA = REPO.parent / "shared" / "data" / "tatoeba-de-en"
# A budget stops training with SIGTERM; the trainer finishes its update (seconds) and saves. The plan may
# set both (the smoke plan's runs are seconds long).
STOP_MARGIN_MINUTES = 1.0
MIN_TRAIN_MINUTES = 2.0


@dataclass
class Study:
    plan: Plan
    folder: Path
    results: Path
    raw: Path
    budget: Budget
    stop_at: Optional[int] = None
    commit: bool = False
    _test: Optional[tuple[list[str], list[str]]] = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def run_dir(self, run: Run) -> Path:
        return self.folder / "runs" / run.name

    def result_path(self, run: Run) -> Path:
        return self.results / f"{run.name}.json"

    def test_text(self) -> tuple[list[str], list[str]]:
        if self._test is None:
            lines = self.plan.data.get("test_lines")
            src, ref = (_lines(self.raw / f"test.{lang}", lines) for lang in ("de", "en"))
            self._test = (src, ref)
        return self._test


def _lines(path: Path, limit: Optional[int]) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:limit] if limit else lines


def prepare_data(study: Study) -> None:
    """The joint sentencepiece model and binarised splits, made once per study folder and reused."""
    from admin_ds.data import PrepareConfig, prepare

    if (study.data / "meta.json").is_file():
        return
    prefixes = {split: study.raw / split for split in ("train", "dev")}
    cut = {"train": study.plan.data.get("train_lines"), "dev": study.plan.data.get("dev_lines")}
    if any(cut.values()):  # a subset (the smoke plan): written beside the data, prepared from there
        subset = study.folder / "subset"
        subset.mkdir(parents=True, exist_ok=True)
        for split, limit in cut.items():
            for lang in ("de", "en"):
                text = _lines(study.raw / f"{split}.{lang}", limit)
                (subset / f"{split}.{lang}").write_text("\n".join(text) + "\n", encoding="utf-8")
            prefixes[split] = subset / split
    print(f"preparing the data (joint {study.plan.data['vocab_size']} sentencepiece) ...", flush=True)
    prepare(PrepareConfig(train_prefix=prefixes["train"], valid_prefix=prefixes["dev"], source_lang="de",
                          target_lang="en", out_dir=study.data, vocab_size=study.plan.data["vocab_size"],
                          force=True, progress=False))


def train_to(study: Study, run: Run, until: int, reserve: float) -> str:
    """Train ``run`` up to ``until`` within the budget: "reached", "paused" or "diverged"."""
    run_dir, target = study.run_dir(run), until
    if study.stop_at is not None:
        until = min(until, study.stop_at)
    if updates_done(run_dir) < until:
        left = study.budget.left()
        margin = study.plan.data.get("stop_margin_minutes", STOP_MARGIN_MINUTES)
        max_minutes = None if left is None else left - reserve - margin
        if max_minutes is not None and max_minutes < study.plan.data.get("min_train_minutes", MIN_TRAIN_MINUTES):
            return "paused"
        print(f"{run.name}: training updates {updates_done(run_dir)} -> {until}", flush=True)
        segment = train_segment(run, study.data, run_dir, until, max_minutes)
        if STOP.signal is not None:
            return "stopped"
        # EXIT_STOPPED or -SIGTERM: the budget's stop (the run is "paused" below unless it got there anyway)
        if segment["exit_code"] not in (0, EXIT_STOPPED, -signal.SIGTERM):
            return "diverged"
    return "reached" if updates_done(run_dir) >= target else "paused"


def advance(study: Study, run: Run) -> str:
    """Take ``run`` as far as the budget allows: "skipped", "paused", or its final status."""
    if study.result_path(run).is_file():
        return "skipped"
    reserve = (study.plan.shapes[run.shape].get("eval_minutes") or 0.0) if run.score else 0.0
    status = "finished"
    rules = {rule["at_update"]: rule for rule in run.give_up}
    for stage in sorted(rules) + [run.updates]:
        reached = train_to(study, run, stage, reserve)
        if reached != "reached":
            if reached == "diverged":
                status = "diverged"
                break
            return reached
        if stage in rules and gives_up(rules[stage], study.run_dir(run)):
            status = "gave_up"
            break
    scores, seconds = dict(NOT_SCORED), 0.0
    if run.score and status == "finished":
        if STOP.signal is not None:
            return "stopped"
        left = study.budget.left()
        if left is not None and left < reserve:
            return "paused"
        print(f"{run.name}: averaging and scoring {len(study.test_text()[0])} test lines", flush=True)
        started = time.perf_counter()
        scores = score_run(run, study.run_dir(run), study.test_text())
        seconds = time.perf_counter() - started
    result = result_of(run, study.run_dir(run), status, scores, seconds)
    write_json_atomic(study.result_path(run), result)
    prune_finished(study.run_dir(run))
    if study.commit:
        commit_result(study.result_path(run), run.name, study.folder)
    return status


def commit_result(path: Path, name: str, folder: Path) -> None:
    """Commit this one result file, nothing else that may be staged; one invocation at a time (git's own
    index lock would fail the second)."""
    with flock(folder / "commit.lock", wait=True):
        subprocess.run(["git", "add", "--", str(path)], cwd=REPO, check=True)
        subprocess.run(["git", "commit", "--quiet", "-m", f"bench.study: result of {name}", "--", str(path)],
                       cwd=REPO, check=True)


def status_of(study: Study, run: Run) -> str:
    if study.result_path(run).is_file():
        return "done"
    done = updates_done(study.run_dir(run))
    return f"{done}/{run.updates}" if done else "not started"


def list_plan(study: Study, runs: list[Run]) -> None:
    print(f"{'run':28s} {'group':8s} {'shape':8s} {'updates':>7s} {'est. min':>8s}  status")
    total = 0.0
    for run in runs:
        minutes = study.plan.estimate_minutes(run)
        left = 0.0 if study.result_path(run).is_file() or minutes is None else minutes * (
            1 - updates_done(study.run_dir(run)) / run.updates)
        total += left
        shown = f"{minutes:8.0f}" if minutes is not None else f"{'?':>8s}"
        print(f"{run.name:28s} {run.group:8s} {run.shape:8s} {run.updates:7d} {shown}  {status_of(study, run)}")
    print(f"about {total:.0f} minutes left (one thread on a shared 2-core AMD EPYC: an upper bound)")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smoke plan (bench/study_plan_quick.json)")
    parser.add_argument("--plan", type=Path, help="a plan file (default: bench/study_plan.json)")
    parser.add_argument("--study", type=Path, help="data and run directories (default: runs/study[-quick])")
    parser.add_argument("--results", type=Path,
                        help="result JSONs (default: bench/results/study; with --quick: STUDY/results)")
    parser.add_argument("--raw", type=Path, default=TATOEBA, help="Tatoeba de-en text: train/dev/test .de/.en")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these runs only")
    parser.add_argument("--group", help="the runs of this group only (study, shape, plateau)")
    parser.add_argument("--list", action="store_true", help="show the plan, each run's status and minutes")
    parser.add_argument("--summary", action="store_true", help="write summary.md and curves.png from the results")
    parser.add_argument("--budget-minutes", type=float, help="stop (checkpointed) before this many minutes")
    parser.add_argument("--stop-at-update", type=int,
                        help="train every unfinished run to this update at most, then stop (checkpointed)")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run's result file")
    return parser.parse_args(argv)


def build_study(args: argparse.Namespace) -> Study:
    plan = load_plan(args.plan or (QUICK_PLAN if args.quick else FULL_PLAN))
    folder = args.study or REPO / "runs" / ("study-quick" if args.quick else "study")
    results = args.results or (folder / "results" if args.quick else REPO / "bench" / "results" / "study")
    if args.commit and not results.resolve().is_relative_to(REPO):
        raise UserError(f"--commit needs --results inside the repository, not {results}")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise UserError(f"--budget-minutes must be positive, got {args.budget_minutes}")
    return Study(plan, folder, results, args.raw, Budget(args.budget_minutes), args.stop_at_update, args.commit)


def selected(study: Study, args: argparse.Namespace) -> list[Run]:
    runs = [study.plan.run(name) for name in args.only] if args.only else study.plan.runs
    if args.group:
        runs = [run for run in runs if run.group == args.group]
        if not runs:
            raise UserError(f"no runs in group {args.group!r}")
    return runs


def flock(path: Path, wait: bool):
    """An exclusive lock on ``path`` (created), held until the handle is closed or the process ends however
    it ends; None when ``wait`` is False and another process holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


def run_lock(study: Study, run: Run):
    """This run's lock: two invocations on one study folder share its queue, each training the runs the
    other does not hold (two would otherwise train the same run into one directory)."""
    return flock(study.folder / "locks" / f"{run.name}.lock", wait=False)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        study = build_study(args)
        runs = selected(study, args)
        if args.list:
            list_plan(study, runs)
            return 0
        if args.summary:
            from bench.study.report import write_summary

            for path in write_summary(study.results, study.plan):
                print(f"wrote {path}")
            return 0
        if not (args.raw / "train.de").is_file():
            raise UserError(f"needs Tatoeba de-en (train/dev/test .de/.en) at {args.raw}; see --raw")
        study.results.mkdir(parents=True, exist_ok=True)
        with flock(study.folder / "study.lock", wait=True):  # one prepares, a second waits and reuses it
            prepare_data(study)
        STOP.catch()
        for run in runs:
            held = None if STOP.signal is not None else run_lock(study, run)
            if held is None and STOP.signal is None:
                print(f"{run.name}: taken by another bench.study", flush=True)
                continue
            with held or contextlib.nullcontext():
                status = "stopped" if STOP.signal is not None else advance(study, run)
            print(f"{run.name}: {status}", flush=True)
            if status == "stopped":
                print("stopped by a signal, checkpointed; run the same command to carry on", flush=True)
                return EXIT_STOPPED
            if status == "paused" and study.stop_at is None:
                print("stopped before the budget ends; run the same command to carry on", flush=True)
                return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
