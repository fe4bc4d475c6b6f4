"""Data at scale: `prepare`'s lines/s and peak memory at two corpus sizes, and the sampler's start-up at 40M.

Three parts, each measurement in a fresh process (peak RSS above that process's import-only RSS, read from
/proc/self/status after resetting the high-water mark), optionally for an older tree too (`--old REF`, a git
commit of this repository, extracted with `git archive` into a temporary folder):

1. `prepare` with one existing sentencepiece model on the Tatoeba de-en train split repeated (cut) to each of
   `--sizes` pairs (dev as valid): lines/s (both sides) and peak RSS, side by side.
2. The full Tatoeba corpus (train, dev, test), new and old tree alternating `--repeats` times: median lines/s.
3. `ParallelDataset.load` + `BatchIterator.build` (rank 0 of `--world-size`) + the first batch, then the next
   epoch's first batch, over `--sampler-examples` synthetic pairs (.idx offsets written with numpy from
   WMT-like lengths, .bin files sparse): seconds, peak RSS and the pickled size of the sampler's state.

    python -m bench.bench_prepare_scale [--sizes 400000 3200000] [--old de8cd6d] [--repeats 3]
    python -m bench.bench_prepare_scale --sizes 20000 40000 --sampler-examples 200000 --repeats 1   # smoke test

Without Tatoeba (the shared data folder beside the checkout) parts 1 and 2 use the built-in toy corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from admin_ds.data import train_sentencepiece, write_synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tatoeba-de-en"
MIB = 2**20

# Shared by both children: peak RSS above the import, with the import's own transient peak forgotten.
MEASURE = """
import json, sys, time
from pathlib import Path

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def start():
    import admin_ds
    print(json.dumps({"module": admin_ds.__file__}))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
    return status("VmRSS:")
"""

PREPARE_CHILD = MEASURE + """
from admin_ds.data import PrepareConfig, prepare
train, valid, test, model, out, workers = sys.argv[1:7]
baseline = start()
begin = time.perf_counter()
meta = prepare(PrepareConfig(train_prefix=train, valid_prefix=valid, test_prefix=test or None, source_lang="de",
                             target_lang="en", out_dir=out, spm_model=model, workers=int(workers), progress=False,
                             force=True))
seconds = time.perf_counter() - begin
lines = 2 * sum(split["lines"] for split in meta["splits"].values())
print(json.dumps({"seconds": seconds, "lines": lines, "peak": status("VmHWM:") - baseline, "baseline": baseline}))
"""

SAMPLER_CHILD = MEASURE + """
import pickle
from admin_ds.data import BatchIterator, ParallelDataset
data, max_tokens, world_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
baseline = start()
begin = time.perf_counter()
dataset = ParallelDataset.load(data, "train")
loaded = time.perf_counter()
iterator = BatchIterator.build(dataset, max_tokens, seed=1, rank=0, world_size=world_size)
next(iter(iterator))
built = time.perf_counter()
iterator.set_epoch(2)
next(iter(iterator))
epoch = time.perf_counter()
print(json.dumps({"load": loaded - begin, "build": built - loaded, "epoch": epoch - built,
                  "peak": status("VmHWM:") - baseline, "batches": len(iterator),
                  "state_bytes": len(pickle.dumps(iterator.state_dict()))}))
"""


def run_child(code: str, tree: Path, *args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=tree)  # "-c" puts the working directory first on sys.path
    if done.returncode:
        raise SystemExit(f"child failed in {tree}:\n{done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    module = json.loads(lines[0])["module"]
    if not Path(module).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the child imported {module}, not the tree {tree}")
    return json.loads(lines[-1])


def extract_tree(ref: str, into: Path) -> Path:
    """The `admin_ds` package as it was at git commit `ref`, under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "admin_ds"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into


def corpus_source(data: Path, tmp: Path) -> tuple[dict, str]:
    """Prefixes of the text to repeat (train, valid, test) and its name: Tatoeba if present, else the toy."""
    if (data / "train.de").is_file():
        return {"train": data / "train", "valid": data / "dev", "test": data / "test"}, f"Tatoeba de-en ({data})"
    prefixes = write_synthetic_corpus(tmp / "toy", n_train=20_000, n_valid=500, n_test=500)
    for prefix in prefixes.values():  # the toy corpus uses src/tgt; the children speak de/en
        for old, new in (("src", "de"), ("tgt", "en")):
            os.replace(f"{prefix}.{old}", f"{prefix}.{new}")
    return prefixes, "the built-in toy corpus (Tatoeba not found)"


def repeated(prefix: Path, pairs: int, out: Path) -> Path:
    """`out.de`/`out.en`: the lines of `prefix` cycled until `pairs` lines."""
    for lang in ("de", "en"):
        lines = Path(f"{prefix}.{lang}").read_bytes().splitlines(keepends=True)
        with open(f"{out}.{lang}", "wb") as handle:
            whole, rest = divmod(pairs, len(lines))
            block = b"".join(lines)
            for _ in range(whole):
                handle.write(block)
            handle.write(b"".join(lines[:rest]))
    return out


def synthetic_dataset(folder: Path, examples: int, seed: int = 0) -> Path:
    """A prepared dataset of `examples` pairs with WMT-like lengths (median ~25 ids, at most 250) and no text:
    real .idx offsets, sparse all-zero .bin files of the right size, and a meta.json."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    src = np.clip(rng.lognormal(3.2, 0.6, examples), 1, 250).astype(np.int64)
    tgt = np.clip(src * rng.normal(1.1, 0.15, examples), 1, 250).astype(np.int64)
    for lang, lengths in (("de", src), ("en", tgt)):
        offsets = np.zeros(examples + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        offsets.tofile(folder / f"train.{lang}.idx")
        with open(folder / f"train.{lang}.bin", "wb") as handle:
            handle.truncate(int(offsets[-1]) * 2)  # uint16 ids, all 0: the sampler never reads them
    meta = {"format": "admin-ds-binarized", "version": 1, "source_lang": "de", "target_lang": "en",
            "joint_vocab": True, "spm_model": {"src": "spm.model", "tgt": "spm.model"},
            "vocab_size": {"src": 32000, "tgt": 32000}, "special_ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3},
            "dtype": "uint16", "max_positions": 256,
            "splits": {"train": {"lines": examples, "examples": examples, "src_tokens": int(src.sum()),
                                 "tgt_tokens": int(tgt.sum()), "dropped": {"empty": 0, "too_long": 0}}},
            "dropped": {"empty": 0, "too_long": 0}, "spm_trained": False, "model_type": None}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def bench_sizes(trees: dict, source: dict, model: Path, sizes: list, workers: int, tmp: Path) -> None:
    print(f"\n1. prepare at two corpus sizes (train repeated, valid = dev; workers={workers})")
    print(f"{'tree':>6} {'pairs':>11} {'lines/s':>10} {'seconds':>8} {'peak above import':>18}")
    for pairs in sizes:
        train = repeated(source["train"], pairs, tmp / f"train{pairs}")
        for name, tree in trees.items():
            result = run_child(PREPARE_CHILD, tree, train, source["valid"], "", model, tmp / "out", workers)
            print(f"{name:>6} {pairs:>11,} {result['lines'] / result['seconds']:>10,.0f} {result['seconds']:>8.1f} "
                  f"{result['peak'] / MIB:>14.1f} MiB")
        for lang in ("de", "en"):
            os.unlink(f"{train}.{lang}")


def bench_full(trees: dict, source: dict, model: Path, repeats: int, workers: int, tmp: Path) -> None:
    print(f"\n2. the full corpus (train + valid + test), alternating, median of {repeats}")
    rates = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            result = run_child(PREPARE_CHILD, tree, source["train"], source["valid"], source["test"], model,
                               tmp / "out", workers)
            rates[name].append(result["lines"] / result["seconds"])
    for name, values in rates.items():
        print(f"{name:>6}: {statistics.median(values):,.0f} lines/s (runs: {', '.join(f'{v:,.0f}' for v in values)})")
    if "old" in rates:
        print(f"  new / old: {statistics.median(rates['new']) / statistics.median(rates['old']):.2f}x")


def bench_sampler(trees: dict, examples: int, max_tokens: int, world_size: int, tmp: Path) -> None:
    start = time.perf_counter()
    data = synthetic_dataset(tmp / f"sampler{examples}", examples)
    print(f"\n3. sampler start-up: {examples:,} pairs (written in {time.perf_counter() - start:.1f} s), "
          f"--max-tokens {max_tokens}, rank 0 of {world_size}")
    for name, tree in trees.items():
        r = run_child(SAMPLER_CHILD, tree, data, max_tokens, world_size)
        print(f"{name:>6}: load {r['load']:.2f} s, sampler + first batch {r['build']:.2f} s, next epoch "
              f"{r['epoch']:.2f} s, peak above import {r['peak'] / MIB:,.0f} MiB, {r['batches']:,} batches per "
              f"rank, state_dict {r['state_bytes']} bytes pickled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", type=int, nargs="*", default=[400_000, 3_200_000],
                        help="pairs, part 1; none skips it")
    parser.add_argument("--repeats", type=int, default=3, help="part 2; 0 skips it")
    parser.add_argument("--sampler-examples", type=int, default=40_000_000, help="part 3; 0 skips it")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--old", metavar="REF", help="also measure the tree at this git commit (e.g. de8cd6d)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"new": ROOT}
        if args.old:
            trees["old"] = extract_tree(args.old, tmp / "old")
        print(f"trees: {', '.join(f'{k}={v}' for k, v in trees.items())}; cpus={os.cpu_count()}, "
              f"load average {os.getloadavg()[0]:.1f}")
        if args.sizes or args.repeats:
            source, name = corpus_source(args.data, tmp)
            model = train_sentencepiece([f"{source['train']}.de", f"{source['train']}.en"], tmp / "spm", 8000,
                                        num_threads=args.workers)
            print(f"corpus: {name}, one joint bpe 8000 model for all runs")
        if args.sizes:
            bench_sizes(trees, source, model, args.sizes, args.workers, tmp)
        if args.repeats:
            bench_full(trees, source, model, args.repeats, args.workers, tmp)
        if args.sampler_examples:
            bench_sampler(trees, args.sampler_examples, args.max_tokens, args.world_size, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
