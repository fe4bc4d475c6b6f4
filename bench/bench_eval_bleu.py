"""The time of one ``--eval-bleu`` validation at 1 and 2 ranks, and the two ways several ranks could share it.

One BLEU validation is what ``Trainer.validate`` adds with ``--eval-bleu``: translate the valid split's raw
source lines with our beam search, gather the translations and score them with sacrebleu
(``admin_ds.training.validation_bleu.BleuValidation.scores``). With several ranks the library shares the
lines out (``shard``: every rank decodes a share, then one all-gather); the alternative, rank 0 decoding
everything while the others wait at a barrier (``--modes rank0``), is timed here too, so the choice can be
checked on any machine. Each world size is one ``torchrun`` launch over the same prepared data and model;
a repeat is timed on rank 0 from a barrier to its scores (so it waits for the slowest rank).

    admin-ds prepare --train-prefix T/train --valid-prefix T/dev --test-prefix T/test --source-lang de \\
        --target-lang en --out DATA        # T: the Tatoeba de-en folder of shared/data
    python -m bench.bench_eval_bleu --data DATA --checkpoint RUN     # a trained run: real output lengths
    python -m bench.bench_eval_bleu --data DATA --arch admin-small --lines 200 --repeats 3 --ranks 1 2

Without ``--checkpoint`` the model has random weights and most translations run to the length cap: the
slowest case, not a typical one. On a CPU machine each rank gets ``--threads`` threads (default: the
cores divided by the ranks, so both world sizes use the same cores). Prints one JSON object: per world size
and mode, the median seconds of a BLEU validation with the min, max and n of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
MODES = ("shard", "rank0")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a prepared dataset with raw valid text (admin-ds prepare)")
    parser.add_argument("--checkpoint", help="weights to decode with (anything load_model reads; default: random)")
    parser.add_argument("--arch", default="admin-small", help="random-weight model preset (default: %(default)s)")
    parser.add_argument("--lines", type=int, default=None, help="score the first N valid lines (default: all)")
    parser.add_argument("--beam", type=int, default=4, help="beam size (default: %(default)s, --eval-bleu-beam's)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes (default: 1 2)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="shard: every rank decodes a share (the library's way); rank0: rank 0 decodes "
                             "everything, the others wait at a barrier (default: both)")
    parser.add_argument("--repeats", type=int, default=5, help="timed validations per world size and mode "
                                                               "(default: %(default)s), after one untimed")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per rank (default: cores / ranks)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per launch (default: %(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one rank of a launch
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, device: torch.device):
    """The model every rank decodes with: the checkpoint's, or the preset's with random weights (seed 0)."""
    import admin_ds
    from admin_ds.data import load_meta

    if args.checkpoint:
        return admin_ds.load_model(args.checkpoint).to(device).eval()
    info = load_meta(args.data)
    torch.manual_seed(0)
    return admin_ds.build_model(args.arch, src_vocab_size=info.src_vocab_size, tgt_vocab_size=info.tgt_vocab_size,
                                share_all_embeddings=info.joint_vocab, dropout=0.0).to(device).eval()


def worker(args: argparse.Namespace) -> None:
    """One rank: join the group, then time ``repeats`` BLEU validations per mode; rank 0 prints the JSON."""
    from admin_ds.data import load_meta
    from admin_ds.inference.scoring import score
    from admin_ds.inference.translate import translate_with
    from admin_ds.training.config import TrainConfig
    from admin_ds.training.engine import barrier, finish_distributed, init_distributed
    from admin_ds.training.validation_bleu import BleuValidation

    rank, world, device = init_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(save_dir="unused", max_steps=1, eval_bleu=True, eval_bleu_beam=args.beam,
                      eval_bleu_lines=args.lines).validate()
    validation = BleuValidation.for_run(cfg, load_meta(args.data))
    # What scores() reads of an engine: the module, the rank, the ZeRO stage (0: decode the module itself).
    engine = SimpleNamespace(module=build_model(args, device), global_rank=rank, zero_optimization_stage=lambda: 0)

    def rank0_alone() -> None:
        if rank == 0:
            found = translate_with(engine.module, validation.src_tokenizer, validation.tgt_tokenizer,
                                   validation.sources, validation.decoding)
            score([nbest[0][0] for nbest in found], validation.references)
        barrier()

    runs = {"shard": lambda: validation.scores(engine, device), "rank0": rank0_alone}
    times = {}
    for mode in args.modes:
        runs[mode]()  # untimed: first-call costs (allocations, lazy imports)
        seconds = []
        for _ in range(args.repeats):
            barrier()
            start = time.perf_counter()
            runs[mode]()
            seconds.append(time.perf_counter() - start)
        times[mode] = seconds
    if rank == 0:
        print("RESULT " + json.dumps({"ranks": world, "lines": len(validation.sources), "times": times}))
    finish_distributed()


def launch(args: argparse.Namespace, ranks: int) -> dict:
    """One torchrun launch of ``ranks`` workers; rank 0's timings."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // ranks)
    modes = ["shard"] if ranks == 1 else args.modes  # one rank: both modes are the same work
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(_free_port()), "-m", "bench.bench_eval_bleu", "--worker", "--data", args.data, "--arch", args.arch,
               "--beam", str(args.beam), "--repeats", str(args.repeats), "--threads", str(threads),
               "--modes", *modes]
    command += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    command += ["--lines", str(args.lines)] if args.lines else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"the {ranks}-rank launch failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {**json.loads(results[-1][len("RESULT "):]), "threads_per_rank": threads}


def summary(seconds: list[float]) -> dict:
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3), "n": len(seconds)}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    report = {"data": args.data, "checkpoint": args.checkpoint, "arch": None if args.checkpoint else args.arch,
              "beam": args.beam, "results": []}
    for ranks in args.ranks:
        found = launch(args, ranks)
        for mode, seconds in found["times"].items():
            report["results"].append({"ranks": ranks, "mode": mode, "lines": found["lines"],
                                      "threads_per_rank": found["threads_per_rank"], **summary(seconds)})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
