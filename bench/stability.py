"""The seed's claim on real data: deep Post-LN fails where Admin trains, and Admin >= Pre-LN.

Two parts, one JSON (bench/results/stability.json) and PNGs beside it:

1. Training: on Tatoeba de-en, one fixed recipe for every run (lr, warm-up, tokens per batch, updates,
   seed), a deep narrow model and a shallow one, each with post-ln, pre-ln, admin and deepnorm. Every run
   is the real ``admin-ds train``; per run: the loss curves (metrics.jsonl), whether it diverged (a
   non-finite loss, or a last training loss above the first) or stalled (validation loss down by less
   than 5%), the last validation loss, and test BLEU / chrF (sacrebleu 13a, beam 5) on the first
   ``--test-lines`` lines of tatoeba-test-v2021-08-07.
2. The paper's analysis at initialisation: the change of the decoder output |F(x, W*) - F(x, W)| caused by
   one update of a fixed size, W* = W - lr * sign(dL/dW) (Adam's first step, whatever the gradient's
   scale), for depths 6 / 12 / 24 / 48 (encoder = decoder layers) and every scheme, on one real batch.
   The paper predicts roughly linear growth with depth for Post-LN and much slower growth for Admin and
   Pre-LN.

    python -m bench.stability                 # the study (about 45 minutes on 2 CPU cores: run it in the background)
    python -m bench.stability --quick         # a smoke run in minutes: tiny models, few updates

Every figure is whatever the run produced; nothing here decides what the outcome should be.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TATOEBA = REPO.parent / "shared" / "data" / "tatoeba-de-en"
SCHEMES = ("post-ln", "pre-ln", "admin", "deepnorm")

# The full study is sized to run within an hour on 2 CPU cores (about 45 minutes on the
# bf16-capable EPYC of bench/README.md): 300 updates of 2048 tokens, bf16 (the CPU's bf16 matmuls make a
# step ~2x faster than fp32), a short warm-up and a high peak lr, the regime in which deep Post-LN is known
# to fail (Liu et al. 2020, sec. 3).
FULL = dict(models={"deep 36-12": (36, 12), "shallow 6-6": (6, 6)}, d_model=128, nhead=4, ffn_dim=512,
            steps=300, lr=2e-3, warmup=100, max_tokens=2048, train_lines=None, vocab=8000, test_lines=500,
            depths=(6, 12, 24, 48), validate_every=50, update_lr=1e-5,
            ds_config="ds_configs/cpu_zero2_bf16.json")
QUICK = dict(models={"deep 12-4": (12, 4), "shallow 2-2": (2, 2)}, d_model=32, nhead=4, ffn_dim=64,
             steps=12, lr=1e-3, warmup=4, max_tokens=1024, train_lines=3000, vocab=500, test_lines=20,
             depths=(2, 4, 8), validate_every=6, update_lr=1e-5)


def prepare_data(work: Path, recipe: dict) -> Path:
    from admin_ds.data import PrepareConfig, prepare

    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        for lang in ("de", "en"):
            lines = (TATOEBA / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            if split == "train" and recipe["train_lines"]:
                lines = lines[: recipe["train_lines"]]
            (raw / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = work / "data"
    prepare(PrepareConfig(train_prefix=raw / "train", valid_prefix=raw / "dev", test_prefix=raw / "test",
                          source_lang="de", target_lang="en", out_dir=out, vocab_size=recipe["vocab"],
                          force=True, progress=False))
    return out


def train_run(data: Path, save: Path, scheme: str, layers: tuple[int, int], recipe: dict) -> float:
    """One real ``admin-ds train``; returns its wall seconds."""
    argv = [sys.executable, "-m", "admin_ds", "train", "--data", str(data), "--save-dir", str(save),
            "--arch", "admin-small", "--residual", scheme, "--encoder-layers", str(layers[0]),
            "--decoder-layers", str(layers[1]), "--d-model", str(recipe["d_model"]), "--nhead",
            str(recipe["nhead"]), "--ffn-dim", str(recipe["ffn_dim"]), "--max-steps", str(recipe["steps"]),
            "--lr", str(recipe["lr"]), "--warmup-updates", str(recipe["warmup"]), "--max-tokens",
            str(recipe["max_tokens"]), "--seed", "1", "--log-interval", str(max(recipe["steps"] // 50, 1)),
            "--validate-interval", str(recipe["validate_every"]), "--save-interval", str(recipe["steps"]),
            "--keep-last", "1", "--no-tensorboard", "--no-resume"]
    if recipe.get("ds_config"):
        argv += ["--deepspeed_config", str(REPO / recipe["ds_config"])]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training {save.name} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def summarise(save: Path) -> dict:
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r["loss"] for r in rows if "loss" in r]
    valid = [r["valid_loss"] for r in rows if "valid_loss" in r]
    diverged = any(not math.isfinite(v) for v in train + valid) or (len(train) > 1 and train[-1] >= train[0])
    stalled = not diverged and len(valid) > 1 and valid[-1] > 0.95 * valid[0]
    return {"diverged": diverged, "stalled": stalled, "first_train_loss": train[0] if train else None,
            "last_train_loss": train[-1] if train else None, "last_valid_loss": valid[-1] if valid else None}


def test_scores(save: Path, data: Path, lines: int) -> dict:
    from admin_ds.inference.config import DecodingConfig
    from admin_ds.inference.scoring import translate_and_score

    src = (data.parent / "raw" / "test.de").read_text(encoding="utf-8").splitlines()[:lines]
    ref = (data.parent / "raw" / "test.en").read_text(encoding="utf-8").splitlines()[:lines]
    result, _ = translate_and_score(str(save), DecodingConfig(beam=5, device="cpu"), src, ref)
    return {key: result[key] for key in ("bleu", "chrf", "signature", "n_sentences", "translate_seconds")}


def output_change(data: Path, recipe: dict) -> dict:
    """|F(x, W*) - F(x, W)| (mean squared, per element of the decoder output) after one sign-step update.

    The step (``update_lr``) is kept small enough to stay in the regime the paper's analysis is about: with
    1e-3 every scheme but DeepNorm already scrambled the LayerNorm-ed output (mean squared change 1.15-1.78,
    of about 2 for unrelated outputs, at d=128 whatever the depth)."""
    lr = recipe["update_lr"]
    from admin_ds.data import BatchIterator, ParallelDataset, load_meta
    from admin_ds.model import build_model, profile_omega

    info = load_meta(data)
    batch = next(iter(BatchIterator.build(ParallelDataset.load(data, "train"), recipe["max_tokens"], seed=1)))
    changes: dict = {}
    for scheme in SCHEMES:
        for depth in recipe["depths"]:
            torch.manual_seed(1)
            model = build_model("admin-small", residual=scheme, encoder_layers=depth, decoder_layers=depth,
                                d_model=recipe["d_model"], nhead=recipe["nhead"], ffn_dim=recipe["ffn_dim"],
                                src_vocab_size=info.src_vocab_size, tgt_vocab_size=info.tgt_vocab_size,
                                dropout=0.0)
            if scheme == "admin":
                profile_omega(model, batch.src_tokens, batch.tgt_input, dropout=False).apply_(model)
            model.train()
            loss, _ = model(batch.src_tokens, batch.tgt_input, target=batch.tgt_output, label_smoothing=0.1)
            (loss / batch.ntokens).backward()
            with torch.no_grad():
                before = model.decode_features(batch.tgt_input, model.encode(batch.src_tokens))
                for p in model.parameters():
                    if p.grad is not None:
                        p.sub_(lr * p.grad.sign())
                after = model.decode_features(batch.tgt_input, model.encode(batch.src_tokens))
            changes.setdefault(scheme, {})[depth] = float((after - before).pow(2).mean())
    return {"lr": lr, "depths": list(recipe["depths"]), "mean_squared_change": changes}


def plot(results: dict, out: Path, runs_dir: Path) -> None:
    from admin_ds.reports.plots import plot as plot_runs

    saves = [runs_dir / name for name in results["runs"]]
    for path in plot_runs(saves, out / "stability-curves"):
        print(f"wrote {path}")
    plot_study(results, runs_dir, out)
    plot_output_change(results["output_change"], out)


def plot_study(results: dict, runs_dir: Path, out: Path) -> None:
    """One panel per model, one colour per scheme: validation loss (dots) over the faint training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from admin_ds.reports.plots import read_metrics

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), sharey=True, squeeze=False)
    colors = dict(zip(SCHEMES, plt.get_cmap("tab10").colors))
    for name, entry in results["runs"].items():
        ax = axes[0][models.index(entry["model"])]
        rows = read_metrics(runs_dir / name / "metrics.jsonl")
        for key, style, alpha in (("loss", "-", 0.35), ("valid_loss", "o-", 1.0)):
            points = [(row["step"], row[key]) for row in rows if key in row]
            ax.plot(*zip(*points), style, color=colors[entry["scheme"]], alpha=alpha, markersize=3,
                    label=entry["scheme"] if key == "valid_loss" else None)
    for ax, model in zip(axes[0], models):
        ax.set(title=model, xlabel="update")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("loss per target token (dots: validation)")
    fig.savefig(out / "stability.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {out / 'stability.png'}")


def plot_output_change(change: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for scheme, values in change["mean_squared_change"].items():
        # depths are int keys when just measured, str keys when read back from the JSON
        ax.plot(change["depths"], [values.get(d, values.get(str(d))) for d in change["depths"]], "o-",
                label=scheme)
    ax.set(xlabel="layers (encoder = decoder)", ylabel="mean |ΔF|² after one update",
           title=f"Output change at initialisation (sign step {change['lr']})")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "output_change.png", dpi=110, bbox_inches="tight")
    print(f"wrote {out / 'output_change.png'}")


def write_output_change(change: dict, out: Path, started: float) -> int:
    change["wall_seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "output_change.json").write_text(json.dumps(change, indent=2) + "\n")
    print(json.dumps(change["mean_squared_change"], indent=1))
    plot_output_change(change, out)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and few updates: a smoke run")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "stability", help="data and run directories")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where the JSON and PNGs go")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the figures from the results JSON and the run directories, training nothing")
    parser.add_argument("--only-output-change", action="store_true",
                        help="part 2 alone (minutes): output_change.json and output_change.png")
    args = parser.parse_args()
    if not (TATOEBA / "train.de").is_file():
        raise SystemExit(f"needs Tatoeba de-en at {TATOEBA}")
    recipe = QUICK if args.quick else FULL
    name = "stability-quick" if args.quick else "stability"
    if args.replot:
        plot(json.loads((args.out / f"{name}.json").read_text()), args.out / name, args.work / "runs")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = prepare_data(args.work, recipe)
    if args.only_output_change:
        return write_output_change(output_change(data, recipe), args.out / f"{name}-output-change", started)
    results = {"recipe": {k: v for k, v in recipe.items() if k != "models"}, "models": recipe["models"],
               "runs": {}, "test_subset": f"first {recipe['test_lines']} lines of tatoeba-test-v2021-08-07"}
    for label, layers in recipe["models"].items():
        for scheme in SCHEMES:
            run = f"{scheme}-{layers[0]}-{layers[1]}"
            save = args.work / "runs" / run
            seconds = train_run(data, save, scheme, layers, recipe)
            entry = {"model": label, "scheme": scheme, "train_seconds": round(seconds, 1), **summarise(save)}
            entry.update(test_scores(save, data, recipe["test_lines"]))
            results["runs"][run] = entry
            print(f"{run:22s} diverged={entry['diverged']!s:5s} stalled={entry['stalled']!s:5s} "
                  f"valid {entry['last_valid_loss']:.3f} BLEU {entry['bleu']:.2f} chrF {entry['chrf']:.2f} "
                  f"({seconds:.0f} s)", flush=True)
    results["output_change"] = output_change(data, recipe)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / f'{name}.json'} ({results['wall_seconds']:.0f} s)")
    plot(results, args.out / name, args.work / "runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
