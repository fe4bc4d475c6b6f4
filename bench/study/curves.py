"""What a run's metrics.jsonl says: the dev-loss curve, its best point, the fall over the last fifth, and
whether the run diverged, stalled or sat on a plateau (docs/study.md defines each field)."""

from __future__ import annotations

import json
import math
from pathlib import Path

# A run "stalled" when its best dev loss is less than 5% below its first (as in bench/stability.py).
STALL_FRACTION = 0.05
# A "flat" stretch: the best dev loss so far improves by less than 1% over it.
FLAT_FRACTION = 0.01
# A "plateau": a flat stretch of at least PLATEAU_UPDATES (two of the probes' validations) at a loss at least
# PLATEAU_ABOVE_END above the run's last dev loss, i.e. a pause the run later left, not its end.
PLATEAU_UPDATES = 50
PLATEAU_ABOVE_END = 0.05


def read_rows(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_minutes(rows: list[dict]) -> list[tuple[int, float]]:
    """(update, minutes of training so far) at every training row. ``elapsed_s`` restarts at 0 in each
    process of a resumed run, so a drop starts a new segment whose time adds to the earlier ones'."""
    points, offset, previous = [], 0.0, 0.0
    for row in rows:
        if "loss" not in row or "elapsed_s" not in row:
            continue
        if row["elapsed_s"] < previous:
            offset += previous
        previous = row["elapsed_s"]
        points.append((row["step"], round((offset + previous) / 60.0, 2)))
    return points


def minute_at(update: int, minutes: list[tuple[int, float]]) -> float | None:
    """Training minutes at the last training row at or before ``update``."""
    before = [minute for step, minute in minutes if step <= update]
    return before[-1] if before else None


def dev_curve(rows: list[dict]) -> list[list]:
    """[[update, dev loss], ...] in update order (a resumed run's rows are already deduplicated)."""
    return [[row["step"], round(row["valid_loss"], 4)] for row in rows if "valid_loss" in row]


def train_curve(rows: list[dict]) -> list[list]:
    return [[row["step"], round(row["loss"], 4)] for row in rows if "loss" in row]


def last_fifth_fall(curve: list[list], updates: int) -> dict:
    """How much the dev loss fell from the last validation at or before 80% of the run to the end."""
    start = [point for point in curve if point[0] <= 0.8 * updates]
    if not start or not curve:
        return {"from_update": None, "to_update": None, "fall": None, "relative_fall": None}
    (first_step, first), (last_step, last) = start[-1], curve[-1]
    return {"from_update": first_step, "to_update": last_step, "fall": round(first - last, 4),
            "relative_fall": round((first - last) / first, 4) if first else None}


def longest_flat(curve: list[list]) -> dict:
    """The longest stretch of updates over which the best dev loss so far improved by less than
    FLAT_FRACTION, with the loss it sat at: a plateau is a long flat stretch well above the final loss."""
    best_span = {"updates": 0, "from_update": None, "to_update": None, "dev_loss": None}
    for i, (start_step, start_loss) in enumerate(curve):
        best = start_loss
        for step, loss in curve[i + 1:]:
            best = min(best, loss)
            if best < start_loss * (1 - FLAT_FRACTION):
                break
            if step - start_step > best_span["updates"]:
                best_span = {"updates": step - start_step, "from_update": start_step, "to_update": step,
                             "dev_loss": start_loss}
    return best_span


def sat_on_plateau(flat: dict, last_dev_loss: float | None) -> bool:
    """Whether a run's longest flat stretch (`longest_flat`) is a plateau it later left."""
    return (flat["updates"] >= PLATEAU_UPDATES and last_dev_loss is not None
            and flat["dev_loss"] >= last_dev_loss * (1 + PLATEAU_ABOVE_END))


def still_on_plateau(flat: dict, last_dev_loss: float | None) -> bool:
    """Whether a run sat flat for at least PLATEAU_UPDATES and never got PLATEAU_ABOVE_END below that
    stretch's loss: flat to its end (deep Post-LN at the unigram loss), or crawling just below the stretch
    (a probe that left it by a few hundredths), which `outcome`'s stall, measured from the first validation,
    misses when that one came before the fall to the plateau. For the 300-update probes; over a whole run
    a 50-update pause near the end is a slow-down, not a plateau."""
    return (flat["updates"] >= PLATEAU_UPDATES and last_dev_loss is not None
            and last_dev_loss >= flat["dev_loss"] * (1 - PLATEAU_ABOVE_END))


def outcome(rows: list[dict], curve: list[list]) -> dict:
    """diverged: a non-finite loss, a rollback, or a last training loss above the first; stalled: the best
    dev loss less than STALL_FRACTION below the first dev loss."""
    train = [row["loss"] for row in rows if "loss" in row]
    values = train + [loss for _, loss in curve]
    diverged = (any(not math.isfinite(v) for v in values) or any("rollback" in row for row in rows)
                or (len(train) > 1 and train[-1] >= train[0]))
    stalled = (not diverged and len(curve) > 1
               and min(loss for _, loss in curve) > (1 - STALL_FRACTION) * curve[0][1])
    return {"diverged": diverged, "stalled": stalled, "rollbacks": sum("rollback" in row for row in rows)}


def summarise(metrics: Path, updates: int) -> dict:
    """Every curve-derived field of a run's result."""
    rows = read_rows(metrics)
    curve = dev_curve(rows)
    minutes = training_minutes(rows)
    best = min(curve, key=lambda point: point[1]) if curve else None
    return {
        "dev_loss": curve,
        "train_loss": train_curve(rows),
        "best_dev_loss": best[1] if best else None,
        "best_dev_update": best[0] if best else None,
        "best_dev_minute": minute_at(best[0], minutes) if best else None,
        "last_dev_loss": curve[-1][1] if curve else None,
        "last_fifth": last_fifth_fall(curve, updates),
        "longest_flat": longest_flat(curve),
        "train_minutes": minutes[-1][1] if minutes else None,
        **outcome(rows, curve),
    }
