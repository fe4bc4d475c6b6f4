"""Translation throughput: CTranslate2 (fp32 and int8) against our beam search, on one model and one input.

The checkpoint is converted twice (``admin-ds convert --format ctranslate2``, without and with
``--quantization int8``) into a temporary folder; then five engines translate the same lines (beam, length
penalty, --max-len-a/b): ours, and each CTranslate2 model twice (``ct2_settings``): with the defaults of
``--engine ctranslate2`` (the same caps and max tokens per batch as ours; one worker of one thread per
--threads core) and with CTranslate2's throughput settings (``-fast``: those workers, caps per batch,
smaller batches). They run one after
the other in each of --repeats rounds (order rotated every round), after one warm-up run each. Figures are
medians of the rounds' sentences/s, the ratios are taken from the medians, and the spread is the range of
the per-round ratios. It also reports how many outputs of each CTranslate2 engine equal ours and the BLEU
of each against the references (when --refs is given).

    python -m bench.bench_ctranslate2 --checkpoint RUN_DIR                   # Tatoeba test, 500 lines
    python -m bench.bench_ctranslate2 --checkpoint RUN_DIR --threads 2 --repeats 7 --out bench/results/ctranslate2.json

``--train WORK`` first trains one (unless WORK/run already holds it), with the recipe of
tests/test_ctranslate2.py: an Admin 3-3 d=128 model (4 heads, ffn 512, 2,000-piece joint vocabulary, 64
positions) for --train-steps updates on the first 40,000 Tatoeba de-en training pairs, on all cores; then
benchmarks it as --checkpoint WORK/run. (A d=256 model took about 8 CPU-seconds an update on the shared
2-core machine, too slow for a benchmark run.)

RUN_DIR is any checkpoint ``admin-ds translate`` reads, with its sentencepiece model beside it or in its run.
``--random-arch PRESET --spm FILE`` instead builds a random-weight model of that preset on the sentencepiece
model's vocabulary (for sizes no trained checkpoint is at hand for; its outputs mostly run to the length
cap, where ours forces EOS and CTranslate2 stops, so both decode about the same number of steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu
import torch

import admin_ds
from admin_ds.checkpoints.convert import convert
from admin_ds.checkpoints.exports import write_export
from admin_ds.data import Tokenizer
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.translator import Translator
from admin_ds.io import read_json_or_empty, write_json_atomic

SHAPE_KEYS = ("encoder_layers", "decoder_layers", "d_model", "nhead", "ffn_dim", "residual", "src_vocab_size")
TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba-de-en"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained checkpoint (run directory or export)")
    parser.add_argument("--train", metavar="WORK", help="train a model into WORK/run first (or reuse it there)")
    parser.add_argument("--train-steps", type=int, default=300, help="updates of the --train model")
    parser.add_argument("--train-only", action="store_true", help="with --train: stop after training")
    parser.add_argument("--random-arch", help="instead: a random-weight model of this preset (needs --spm)")
    parser.add_argument("--spm", help="sentencepiece model for --random-arch")
    parser.add_argument("--input", default=str(TATOEBA / "test.de"), help="source lines (default Tatoeba test.de)")
    parser.add_argument("--refs", default=str(TATOEBA / "test.en"), help="references for BLEU ('' to skip)")
    parser.add_argument("--lines", type=int, default=500, help="use every k-th line so that this many remain")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded source tokens per batch")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every engine")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fast-max-tokens", type=int, default=1024,
                        help="token budget of a batch in the CTranslate2 throughput variants (-fast)")
    parser.add_argument("--out", help="also store the result in this JSON file, under --name")
    parser.add_argument("--name", help="key of this result in --out (default: trained, or the preset)")
    return parser.parse_args()


def shown(path: str) -> str:
    """A path as results record it: its folder and name only, never where this machine keeps it."""
    return str(Path(Path(path).parent.name) / Path(path).name)


def subset(path: str, count: int) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return lines[:: max(1, len(lines) // count)][:count]


def train_checkpoint(work: Path, steps: int) -> Path:
    """WORK/run: the --train model (module docstring), trained here unless WORK/run already has its last
    checkpoint."""
    from admin_ds import cli
    from admin_ds.checkpoints.rundir import latest_tag, step_tag
    from admin_ds.data import PrepareConfig, prepare

    run = work / "run"
    if run.is_dir() and latest_tag(run) == step_tag(steps):
        return run
    text = work / "text"
    text.mkdir(parents=True, exist_ok=True)
    for split, name, count in (("train", "train", 40_000), ("dev", "dev", 300)):
        for side in ("de", "en"):
            lines = (TATOEBA / f"{name}.{side}").read_text(encoding="utf-8").splitlines()[:count]
            (text / f"{split}.{side}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if not (work / "data" / "meta.json").is_file():
        prepare(PrepareConfig(train_prefix=text / "train", valid_prefix=text / "dev", source_lang="de",
                              target_lang="en", out_dir=work / "data", vocab_size=2000, max_positions=64,
                              progress=False))
    code = cli.main(["train", "--data", str(work / "data"), "--save-dir", str(run), "--arch", "admin-tiny",
                     "--encoder-layers", "3", "--decoder-layers", "3", "--d-model", "128", "--nhead", "4",
                     "--ffn-dim", "512", "--max-tokens", "4096", "--max-steps", str(steps), "--lr", "2e-3",
                     "--warmup-updates", "100", "--log-interval", "50", "--save-interval", str(steps),
                     "--validate-interval", "0", "--no-tensorboard"])
    if code != 0:
        raise SystemExit(f"training the benchmark model failed (exit {code})")
    return run


def random_checkpoint(arch: str, spm: str, out: Path) -> Path:
    """A random-weight export of ``arch`` on ``spm``'s vocabulary, with spm.model beside it."""
    size = Tokenizer(spm).vocab_size
    torch.manual_seed(0)
    model = admin_ds.build_model(arch, dropout=0.0, src_vocab_size=size, tgt_vocab_size=size, max_positions=256)
    write_export(model, out)
    shutil.copyfile(spm, out / "spm.model")
    return out


def ct2_settings(threads: int, fast_max_tokens: int) -> dict[str, dict]:
    """The CTranslate2 variants measured: the defaults of `admin-ds translate --engine ctranslate2` on a
    machine of --threads cores (each sentence under its own cap, one worker of one thread per core), and
    CTranslate2's throughput settings (the same workers, caps per batch, smaller token batches)."""
    return {"": {"workers": threads, "threads": 1},
            "-fast": {"caps": "batch", "workers": threads, "threads": 1, "max_tokens": fast_max_tokens}}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def log_round(round_: int, rates: dict[str, list[float]]) -> None:
    print(f"round {round_ + 1}: " + ", ".join(f"{name} {values[-1]:.1f}" for name, values in rates.items()),
          file=sys.stderr, flush=True)


def main() -> None:
    args = parse_args()
    if args.train:
        torch.set_num_threads(os.cpu_count() or 1)  # training: all cores; decoding: --threads
        args.checkpoint = str(train_checkpoint(Path(args.train), args.train_steps))
        if args.train_only:
            return
    if (args.checkpoint is None) == (args.random_arch is None) or (args.random_arch and not args.spm):
        raise SystemExit("pass --checkpoint RUN, --train WORK, or --random-arch PRESET with --spm FILE")
    torch.set_num_threads(args.threads)
    load_at_start = round(os.getloadavg()[0], 2)
    sources = subset(args.input, args.lines)
    refs = subset(args.refs, args.lines) if args.refs and not args.random_arch else None
    decoding = DecodingConfig(beam=args.beam, max_tokens=args.max_tokens, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(args.random_arch, args.spm, Path(tmp) / "random")
        ours = Translator(str(checkpoint), decoding=decoding)
        engines = {"admin-ds": lambda: ours.translate(sources)}
        for name, quantization in (("ctranslate2-fp32", None), ("ctranslate2-int8", "int8")):
            convert(checkpoint, Path(tmp) / name, format="ctranslate2", quantization=quantization)
            for suffix, settings in ct2_settings(args.threads, args.fast_max_tokens).items():
                ct2 = Translator(Path(tmp) / name, "ctranslate2", decoding=dataclasses.replace(decoding, **settings))
                engines[name + suffix] = lambda ct2=ct2: ct2.translate(sources)
        outputs = {name: run() for name, run in engines.items()}  # warm-up, and the outputs compared
        rates = {name: [] for name in engines}
        order = list(engines)
        for round_ in range(args.repeats):
            for name in order[round_ % len(order):] + order[: round_ % len(order)]:
                start = time.perf_counter()
                engines[name]()
                rates[name].append(len(sources) / (time.perf_counter() - start))
            log_round(round_, rates)
    median = {name: statistics.median(values) for name, values in rates.items()}
    per_round = {name: [r / o for r, o in zip(values, rates["admin-ds"])] for name, values in rates.items()}
    result = {
        "checkpoint": "trained here (--train)" if args.train else (shown(args.checkpoint) if args.checkpoint
                                                                   else f"random {args.random_arch}"),
        "model": {k: v for k, v in ours._model.cfg.to_dict().items() if k in SHAPE_KEYS},
        "parameters_M": round(sum(p.numel() for p in ours._model.parameters()) / 1e6, 2),
        "input": shown(args.input), "lines": len(sources), "beam": args.beam, "max_tokens": args.max_tokens,
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "ctranslate2": __import__("ctranslate2").__version__, "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "settings": {name + suffix: settings for name in ("ctranslate2-fp32", "ctranslate2-int8")
                     for suffix, settings in ct2_settings(args.threads, args.fast_max_tokens).items()},
        "sentences_per_s": {name: round(value, 2) for name, value in median.items()},
        "runs": {name: [round(v, 2) for v in values] for name, values in rates.items()},
        "ratio_vs_admin_ds": {name: round(median[name] / median["admin-ds"], 2) for name in engines},
        "ratio_per_round_min_max": {name: [round(min(v), 2), round(max(v), 2)] for name, v in per_round.items()},
        "same_output_as_admin_ds": {name: sum(a == b for a, b in zip(outputs[name], outputs["admin-ds"]))
                                    for name in engines},
    }
    if refs:
        result["bleu"] = {name: round(sacrebleu.corpus_bleu(out, [refs]).score, 2) for name, out in outputs.items()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        stored = read_json_or_empty(args.out)
        stored[args.name or args.random_arch or "trained"] = result
        write_json_atomic(args.out, stored)


if __name__ == "__main__":
    main()
