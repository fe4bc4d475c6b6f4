"""Padding share of our length-bucketed batches on real corpora (the goal: padding under 10%).

    python -m bench.bench_padding [--work DIR] [--quick]

Prepares Tatoeba de-en (train) and newstest2014 de-en (news: longer, more varied sentences, the WMT test
domain) with our own `prepare` (one joint 8k BPE model, trained on Tatoeba and reused for newstest), then
cuts one epoch of each into the batches `admin-ds train` makes (BatchIterator: the training sampler and
collate) at several --max-tokens and reports pad positions / all positions of the padded src_tokens and
tgt_output tensors together (EOS/BOS included, as the model sees them; bench/gpu/batches.py's count).
--quick skips the largest batch size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from admin_ds.data import BatchIterator, ParallelDataset, PrepareConfig, prepare
from bench.gpu.batches import describe, padding_share

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_TOKENS = (4096, 16384, 65536)


def epoch_padding(folder: Path, max_tokens: int) -> dict:
    """One shuffled epoch of the training batches ``admin-ds train`` would make of ``folder``:
    {"share": pad / all positions of src_tokens and tgt_output (bench/gpu/batches.py), "batches", "mean_rows"}."""
    batches = [describe(batch) for batch in BatchIterator.build(ParallelDataset.load(folder, "train"), max_tokens,
                                                                seed=1)]
    rows = sum(len(b.batch) for b in batches)
    return {"share": padding_share(batches), "batches": len(batches), "mean_rows": rows / max(len(batches), 1)}


def prepared(work: Path) -> dict[str, Path]:
    """Prepared Tatoeba de-en and newstest2014 de-en folders under ``work`` (made once, then reused)."""
    tatoeba, news = work / "tatoeba-de-en", work / "newstest2014"
    if not (tatoeba / "meta.json").is_file():
        corpus = SHARED / "tatoeba-de-en"
        prepare(PrepareConfig(train_prefix=corpus / "train", valid_prefix=corpus / "dev", source_lang="de",
                              target_lang="en", out_dir=tatoeba, vocab_size=8000, force=True))
    if not (news / "meta.json").is_file():
        spm = next(tatoeba.glob("*.model"))
        prepare(PrepareConfig(train_prefix=SHARED / "eval-de-en" / "newstest2014",
                              valid_prefix=SHARED / "eval-de-en" / "flores200-devtest", source_lang="deu",
                              target_lang="eng", out_dir=news, spm_model=spm, force=True))
    return {"tatoeba de-en": tatoeba, "newstest2014 de-en": news}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="folder for the prepared corpora (kept; default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help=f"skip --max-tokens {MAX_TOKENS[-1]}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folders = prepared(Path(args.work or scratch))
        for name, folder in folders.items():
            data = ParallelDataset.load(folder, "train")
            src, tgt = np.asarray(data.src_sizes), np.asarray(data.tgt_sizes)
            print(f"\n{name}: {len(src)} pairs, mean length src {src.mean():.1f} tgt {tgt.mean():.1f} tokens")
            for max_tokens in MAX_TOKENS[:-1] if args.quick else MAX_TOKENS:
                r = epoch_padding(folder, max_tokens)
                print(f"  --max-tokens {max_tokens:6d}: padding {100 * r['share']:5.2f} %, {r['batches']} batches "
                      f"of {r['mean_rows']:.0f} pairs")
                print("RESULT " + json.dumps({"corpus": name, "max_tokens": max_tokens, **r}))

if __name__ == "__main__":
    main()
