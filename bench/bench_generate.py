"""Beam-search throughput: incremental decoding (key/value cache) vs recomputing the whole prefix each step.

Both runs decode the same random-weight model on the same inputs and must return identical hypotheses
(asserted). Runs alternate between the two modes; the figure is the median sentences/s over --repeats.
Target: incremental >= 3x full recompute at beam 5.

    python -m bench.bench_generate                       # admin-small (6-6, d=256), 16 sentences, beam 5
    python -m bench.bench_generate --device cuda --sentences 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import admin_ds
from admin_ds.inference.beam import generate, make_batch


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="admin-small", help="model preset (default admin-small: 6-6 d=256)")
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--src-len", type=int, default=20, help="mean source length in tokens")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=30, help="tokens generated per sentence at most")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = admin_ds.build_model(args.arch, dropout=0.0, max_positions=max(256, args.max_len + 2)).to(device).eval()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.src_len // 2, args.src_len * 3 // 2 + 1, (args.sentences,), generator=gen)
    rows = [torch.randint(4, cfg.src_vocab_size, (int(n),), generator=gen).tolist() + [cfg.eos_id]
            for n in lengths]
    src = make_batch(rows, cfg.pad_id, device)  # [B, S]
    # a = 0, b = max_len: every sentence has the same cap, so both modes decode the same number of steps.
    options = dict(beam=args.beam, nbest=1, max_len_a=0.0, max_len_b=args.max_len)

    def run(incremental: bool):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        hyps = generate(model, src, incremental=incremental, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return hyps, time.perf_counter() - start

    reference, _ = run(True)  # warm-up
    rates = {True: [], False: []}
    for _ in range(args.repeats):
        for incremental in (True, False):
            hyps, seconds = run(incremental)
            for a, b in zip(hyps, reference):
                assert a[0].tokens == b[0].tokens, "incremental and full recompute disagree"
                assert abs(a[0].score - b[0].score) < 1e-3, (a[0].score, b[0].score)
            rates[incremental].append(args.sentences / seconds)
    fast, slow = statistics.median(rates[True]), statistics.median(rates[False])
    mean_len = sum(len(h[0].tokens) for h in reference) / len(reference)
    print(json.dumps({
        "arch": args.arch, "device": str(device), "threads": torch.get_num_threads(),
        "sentences": args.sentences, "beam": args.beam, "max_len": args.max_len,
        "mean_output_tokens": round(mean_len, 1),
        "incremental_sent_per_s": round(fast, 2), "full_recompute_sent_per_s": round(slow, 2),
        "speedup": round(fast / slow, 2),
        "incremental_runs": [round(r, 2) for r in rates[True]],
        "full_recompute_runs": [round(r, 2) for r in rates[False]],
    }, indent=2))


if __name__ == "__main__":
    main()
