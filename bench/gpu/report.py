"""The GPU check's closing table: one line per row, and the check's two goals for 60-12 d=1024 bf16."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MFU_GOAL, STOCK_RATIO_GOAL = 0.40, 1.0
GOAL_GROUP = ("60-12 d=1024", "bf16")


def with_stock_ratios(rows: list[dict]) -> list[dict]:
    """Each of our rows gets its stock row's tokens/s and the ratio ours / stock (same shape, precision)."""
    stock = {(r["shape"], r["precision"]): r for r in rows if r.get("side") == "stock" and "tokens_per_s" in r}
    out = []
    for row in rows:
        row = dict(row)
        match = stock.get((row.get("shape"), row.get("precision")))
        if row.get("side") == "ours" and "tokens_per_s" in row and match is not None:
            row["stock_tokens_per_s"] = match["tokens_per_s"]
            row["vs_stock"] = round(row["tokens_per_s"] / match["tokens_per_s"], 4)
        out.append(row)
    return out


def _line(row: dict) -> str:
    name = f"{row['config']:<32}"
    if "tokens_per_s" not in row:
        return f"{name} {row.get('error') or row.get('skipped')}"
    ratio = f"{row['vs_stock']:.3f}x" if "vs_stock" in row else "-"
    syncs = "-" if row.get("host_syncs") is None else str(row["host_syncs"])
    return (f"{name} {row['tokens_per_s']:>12,.0f} {row['mfu']:>7.1%} {row['peak_mem_GiB']:>8.2f} "
            f"{row['plan_GiB']:>8.2f} {row['padding_share']:>6.1%} {row['step_s_median']:>8.4f} {syncs:>6} {ratio:>8}")


def summary_table(rows: list[dict]) -> str:
    rows = with_stock_ratios(rows)
    head = (f"{'config':<32} {'tokens/s':>12} {'MFU':>7} {'peak GiB':>8} {'plan GiB':>8} {'pad':>6} "
            f"{'step s':>8} {'syncs':>6} {'vs stock':>8}")
    lines = ["", head, *(_line(r) for r in rows)]
    goal = [r for r in rows if (r.get("shape"), r.get("precision")) == GOAL_GROUP and r.get("side") == "ours"
            and "mfu" in r]
    for row in goal:
        met_mfu = "met" if row["mfu"] >= MFU_GOAL else "NOT met"
        met_ratio = ("met" if row["vs_stock"] >= STOCK_RATIO_GOAL else "NOT met") if "vs_stock" in row else "no stock"
        lines.append(f"goal {row['config']}: MFU {row['mfu']:.1%} (>= {MFU_GOAL:.0%}: {met_mfu}); "
                     f"ours / stock {row.get('vs_stock', float('nan')):.3f}x (>= {STOCK_RATIO_GOAL}: {met_ratio})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python3 -m bench.gpu.report OUT/gpu_check.jsonl``: the table again, from the rows written so far."""
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.startswith("{")]
    print(summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
