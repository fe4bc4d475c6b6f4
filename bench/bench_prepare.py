"""Benchmark `prepare` against a bare single-process SentencePiece loop on the full Tatoeba de-en corpus.

Trains one SentencePiece model first (its time is reported separately), then alternates, `--repeats`
times each, `prepare(... spm_model=that model)` over train+dev+test and a plain Python loop of
`sp.encode(line)` over the same (already read) lines with the same model, and prints medians.
`prepare` does strictly more (read and decode files, filter, write arrays), so a ratio <= 1.0 means
its parallel encoding more than pays for that.

    python -m bench.bench_prepare [--repeats 3] [--workers N] [--data ../shared/data/tatoeba-de-en]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from admin_ds.data import PrepareConfig, prepare, train_sentencepiece
from admin_ds.data.textio import read_lines

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba-de-en"
SPLITS = {"train": "train", "valid": "dev", "test": "test"}  # prepare's split name -> file prefix
LANGS = ("de", "en")


def bare_loop(sp: spm.SentencePieceProcessor, lines: list[str]) -> float:
    start = time.perf_counter()
    for line in lines:
        sp.encode(line)
    return time.perf_counter() - start


def timed_prepare(data: Path, model: Path, out: Path, workers: int) -> float:
    config = PrepareConfig(train_prefix=data / SPLITS["train"], valid_prefix=data / SPLITS["valid"],
                           test_prefix=data / SPLITS["test"], source_lang="de", target_lang="en", out_dir=out,
                           spm_model=model, workers=workers, force=True, progress=False)
    start = time.perf_counter()
    prepare(config)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    if not (args.data / "train.de").is_file():
        print(f"skipped: Tatoeba de-en not found at {args.data} (the shared data folder beside the checkout)")
        return 0

    lines = [line for prefix in SPLITS.values() for lang in LANGS
             for line in read_lines(args.data / f"{prefix}.{lang}")]
    print(f"corpus: {args.data}, {len(lines):,} sentences (train+dev+test, both sides), "
          f"workers={args.workers}, cpus={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        model = train_sentencepiece([args.data / "train.de", args.data / "train.en"], tmp / "spm", args.vocab_size,
                                    "bpe", num_threads=args.workers)
        print(f"sentencepiece training (joint bpe {args.vocab_size}, train split): {time.perf_counter() - start:.2f} s")
        sp = spm.SentencePieceProcessor(model_file=str(model))

        prepare_times, bare_times = [], []
        for repeat in range(args.repeats):
            prepare_times.append(timed_prepare(args.data, model, tmp / "out", args.workers))
            bare_times.append(bare_loop(sp, lines))
            print(f"  repeat {repeat + 1}: prepare {prepare_times[-1]:.2f} s, bare loop {bare_times[-1]:.2f} s")
        shutil.rmtree(tmp / "out", ignore_errors=True)

    prepare_s, bare_s = statistics.median(prepare_times), statistics.median(bare_times)
    print(f"prepare (median of {args.repeats}): {prepare_s:.2f} s, {len(lines) / prepare_s:,.0f} sentences/s")
    print(f"bare loop (median of {args.repeats}): {bare_s:.2f} s, {len(lines) / bare_s:,.0f} sentences/s")
    print(f"ratio prepare/bare: {prepare_s / bare_s:.2f}x (target <= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
