"""The study's summary from its result files: a markdown table per group (summary.md, for docs/results.md),
one figure of the dev-loss curves (curves.png), a panel per shape, and one of the plateau probes
(plateau.png), a panel per setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from admin_ds.io import write_text_atomic
from bench.study.curves import PLATEAU_ABOVE_END, PLATEAU_UPDATES, sat_on_plateau, still_on_plateau
from bench.study.plan import Plan

# The updates at which the settings table compares the probes' dev loss.
PROBE_CHECKPOINTS = (100, 150, 200, 300)


def read_results(folder: Path, plan: Plan) -> list[dict]:
    """The plan's finished runs, in plan order."""
    found = []
    for run in plan.runs:
        path = folder / f"{run.name}.json"
        if path.is_file():
            found.append(json.loads(path.read_text(encoding="utf-8")))
    return found


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def outcome_word(result: dict) -> str:
    if result["status"] != "finished":
        return result["status"].replace("_", " ")
    return "diverged" if result["diverged"] else "stalled" if result["stalled"] else "trained"


def study_table(results: list[dict]) -> str:
    lines = ["| run | scheme | ω init | seed | updates | best dev loss (update, min) | dev-loss fall, last fifth "
             "| BLEU | chrF | outcome | wall min |", "|" + "---|" * 11]
    for r in results:
        s = r["settings"]
        omega = s.get("omega_init", "") if s["residual"] == "admin" else ""
        best = (f"{_number(r['best_dev_loss'])} ({r['best_dev_update']}, {_number(r['best_dev_minute'], 0)})"
                if r["best_dev_loss"] is not None else "-")
        lines.append(f"| {r['name']} | {s['residual']} | {omega} | {s['seed']} | {r['updates_done']} | {best} "
                     f"| {_number(r['last_fifth']['fall'])} | {_number(r['bleu'])} | {_number(r['chrf'])} "
                     f"| {outcome_word(r)} | {_number(r['wall_minutes'], 0)} |")
    return "\n".join(lines)


def plateau_table(results: list[dict]) -> str:
    lines = ["| run | scheme | ω init | lr | warm-up | tokens | seed | longest flat stretch (updates, at loss) "
             "| last dev loss |", "|" + "---|" * 9]
    for r in results:
        s, flat = r["settings"], r["longest_flat"]
        omega = s.get("omega_init", "") if s["residual"] == "admin" else ""
        lines.append(f"| {r['name']} | {s['residual']} | {omega} | {s['lr']:g} | {s['warmup_updates']} "
                     f"| {s['max_tokens']} | {s['seed']} | {flat['updates']} ({flat['from_update']}-"
                     f"{flat['to_update']}, {_number(flat['dev_loss'])}) | {_number(r['last_dev_loss'])} |")
    return "\n".join(lines)


def setting_of(result: dict) -> str:
    """A probe's setting: its name without the ``-sSEED`` the plan appended (plan._expand)."""
    return result["name"].removesuffix(f"-s{result['settings']['seed']}")


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"


def plateau_settings_table(probes: list[dict]) -> str:
    """A row per setting over its seeds: the dev loss at PROBE_CHECKPOINTS (mean, and the range across
    seeds), how many seeds sat on a plateau they later left (`curves.sat_on_plateau`) and how many were still
    on one at the end (`curves.still_on_plateau`)."""
    header = " | ".join(f"dev loss at {u}" for u in PROBE_CHECKPOINTS)
    lines = [f"| setting | seeds | {header} | seeds with a plateau (>= {PLATEAU_UPDATES} updates) "
             f"| seeds still on it at the end (within {PLATEAU_ABOVE_END:.0%}) |",
             "|" + "---|" * (4 + len(PROBE_CHECKPOINTS))]
    for setting in dict.fromkeys(setting_of(r) for r in probes):
        runs = [r for r in probes if setting_of(r) == setting]
        curves = [dict(map(tuple, r["dev_loss"])) for r in runs]
        at = " | ".join(_spread([c[u] for c in curves if u in c]) for u in PROBE_CHECKPOINTS)
        plateaus = [str(r["settings"]["seed"]) for r in runs if sat_on_plateau(r["longest_flat"], r["last_dev_loss"])]
        seeds = ", ".join(str(r["settings"]["seed"]) for r in runs)
        stuck = sum(still_on_plateau(r["longest_flat"], r["last_dev_loss"]) for r in runs)
        lines.append(f"| {setting} | {seeds} | {at} | {len(plateaus)} of {len(runs)}"
                     + (f" (seed {', '.join(plateaus)})" if plateaus else "") + f" | {stuck} of {len(runs)} |")
    return "\n".join(lines)


# The paper's test BLEU (Liu et al. 2020, Tables 1 and 2), Post-LN / Pre-LN / Admin, beside which the study
# puts its own: WMT14 En-De at 6L-6L, 12L-12L and 18L-18L, WMT14 En-Fr at 60L-12L (None: diverged).
PAPER_BLEU = (("WMT14 En-De 6L-6L", (27.80, 27.27, 27.90)), ("WMT14 En-De 12L-12L", (None, 28.26, 28.58)),
              ("WMT14 En-De 18L-18L", (None, 28.38, 29.03)), ("WMT14 En-Fr 60L-12L", (None, 43.10, 43.80)))
SCHEMES = (("post-ln", None), ("pre-ln", None), ("admin", "profile"), ("admin", "logn"))


SEED_STYLES = ("o-", "s--", "^:")  # a scheme keeps its colour across seeds; its seeds differ in line and marker


def _scheme_of(settings: dict) -> tuple:
    """The (scheme, ω start) column of SCHEMES that a run with these settings belongs to."""
    residual = settings["residual"]
    return (residual, settings.get("omega_init") if residual == "admin" else None)


def _bleu_cell(runs: list[dict], planned: bool) -> str:
    """BLEU of a scheme's runs at one shape: mean (range) over seeds, or what stopped them, or why there
    are none (``planned``: the plan has such a run)."""
    if not runs:
        return "not run yet" if planned else "not in the plan"
    scored = [r["bleu"] for r in runs if r["bleu"] is not None]
    if not scored:
        return " / ".join(f"{outcome_word(r)} at update {r['updates_done']}" for r in runs)
    return _spread(scored) + (f" ({len(scored)} seeds)" if len(scored) > 1 else "")


def paper_table(study: list[dict], planned: Optional[set] = None) -> str:
    """The paper's BLEU per depth beside the study's, one column per scheme (Admin with ω from its
    profile, and, ours only, from admin-torch's closed form). ``planned``: the (shape, scheme) pairs of the
    plan's study runs, which tell a cell still to come from one the plan leaves out (None: all to come)."""
    lines = ["| model | data | Post-LN | Pre-LN | Admin (profiled ω) | Admin (`logn` ω) |", "|" + "---|" * 6]
    for model, bleus in PAPER_BLEU:
        cells = ["diverged" if b is None else f"{b:.2f}" for b in bleus]
        lines.append(f"| {model} (paper) | WMT14 newstest2014 | {' | '.join(cells)} | - |")
    for shape in dict.fromkeys(r["shape"] for r in study):
        runs = [r for r in study if r["shape"] == shape]
        s = runs[0]["settings"]
        cells = [_bleu_cell([r for r in runs if _scheme_of(r["settings"]) == scheme],
                            planned is None or (shape, scheme) in planned) for scheme in SCHEMES]
        lines.append(f"| {s['encoder_layers']}L-{s['decoder_layers']}L d={s['d_model']} (ours) "
                     f"| Tatoeba de-en test | {' | '.join(cells)} |")
    return "\n".join(lines)


def markdown(results: list[dict], plan: Optional[Plan] = None) -> str:
    machines = sorted({f"{r['cpu_model']} ({r['cpu_count']} cores, OMP_NUM_THREADS={r['omp_num_threads']})"
                       for r in results})
    parts = ["# The study's results (written by `python -m bench.study --summary`)", "",
             "Machines: " + "; ".join(machines) if machines else "No finished runs yet.", ""]
    study = [r for r in results if r["group"] == "study"]
    probes = [r for r in results if r["group"] != "study"]
    planned = None if plan is None else {(run.shape, _scheme_of(run.settings)) for run in plan.runs
                                         if run.group == "study"}
    if study:
        signatures = sorted({r["bleu_signature"] for r in study if r["bleu_signature"]})
        parts += ["## Trained models", "", study_table(study), "",
                  "BLEU signature: " + ("; ".join(f"`{s}`" for s in signatures) or "none scored yet"), "",
                  "## Beside the paper (test BLEU)", "", paper_table(study, planned), ""]
    if probes:
        plateau = [r for r in probes if r["group"] == "plateau"]
        if plateau:
            parts += ["## Plateau probes by setting", "", plateau_settings_table(plateau), ""]
        parts += ["## Plateau probes", "", plateau_table(probes), ""]
    return "\n".join(parts)


def plot_curves(results: list[dict], out: Path) -> Path | None:
    """Dev loss over updates, a panel per shape of the study group, a line per run."""
    study = [r for r in results if r["group"] == "study" and r["dev_loss"]]
    if not study:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in study))
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for r in (r for r in study if r["shape"] == shape):
            scheme = _scheme_of(r["settings"])
            color = f"C{SCHEMES.index(scheme)}" if scheme in SCHEMES else None
            style = SEED_STYLES[(r["settings"]["seed"] - 1) % len(SEED_STYLES)]
            ax.plot(*zip(*r["dev_loss"]), style, color=color, markersize=2.5, label=r["name"])
        s = next(r for r in study if r["shape"] == shape)["settings"]
        ax.set(title=f"{shape}: {s['encoder_layers']}-{s['decoder_layers']}, d={s['d_model']}", xlabel="update",
               ylabel="dev loss (label-smoothed, per token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = out / "curves.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# The probes every panel of plateau.png repeats as a grey mean curve, to read the other settings against.
REFERENCE_SETTINGS = {"plateau-pre-ln": "--", "plateau-admin": ":"}


def _mean_curve(runs: list[dict]) -> tuple[list[int], list[float]]:
    """The mean dev loss over seeds at each update all of them validated at."""
    curves = [dict(map(tuple, r["dev_loss"])) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [sum(c[u] for c in curves) / len(curves) for u in steps]


def plot_plateau(results: list[dict], out: Path) -> Path | None:
    """The probes' dev loss over updates, a panel per setting (the run name without its seed), a line per
    seed, with the mean of Pre-LN's and of profiled Admin's seeds in grey: how often a plateau shows, and
    which setting removes it."""
    probes = [r for r in results if r["group"] == "plateau" and r["dev_loss"]]
    if not probes:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(setting_of(r) for r in probes))
    references = {name: _mean_curve([r for r in probes if setting_of(r) == name])
                  for name in REFERENCE_SETTINGS if name in variants}
    columns = min(3, len(variants))
    rows = -(-len(variants) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), sharex=True, sharey=True,
                             squeeze=False, constrained_layout=True)
    for ax, variant in zip(axes.flat, variants):
        for name, (steps, losses) in references.items():
            if name != variant:
                ax.plot(steps, losses, REFERENCE_SETTINGS[name], color="grey", label=f"{name} (mean)")
        for r in (r for r in probes if setting_of(r) == variant):
            ax.plot(*zip(*r["dev_loss"]), "o-", markersize=2, label=f"seed {r['settings']['seed']}")
        ax.set(title=variant, ylim=(4.5, 6.6))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("dev loss")
    for column in range(columns):
        shown = [ax for ax in axes[:, column] if ax in axes.flat[:len(variants)]]
        shown[-1].set_xlabel("update")
        shown[-1].xaxis.set_tick_params(labelbottom=True)  # sharex hides them above an empty panel
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    path = out / "plateau.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_summary(folder: Path, plan: Plan) -> list[Path]:
    results = read_results(folder, plan)
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomic(folder / "summary.md", markdown(results, plan))]
    figures = [plot_curves(results, folder), plot_plateau(results, folder)]
    return written + [figure for figure in figures if figure]
