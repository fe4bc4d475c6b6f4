"""``admin-ds evaluate``: score translations with sacrebleu (BLEU and chrF, with their signatures).

Two modes:
  - ``--hyp FILE --ref FILE`` scores existing translations;
  - ``--checkpoint PATH`` translates first (same decoding flags as ``translate``). The source and reference
    text come, first match wins, from ``--src FILE --ref FILE``; from the raw text files a prepared dataset
    names in meta.json as ``"raw": {SPLIT: {"src": path, "tgt": path}}`` (relative to DIR); or, failing
    both, from the binarised split itself, decoded with the dataset's sentencepiece models. The last is
    detokenised text (after sentencepiece's normalisation, without pairs ``prepare`` dropped), so its BLEU is
    not comparable with published figures; the JSON says which was used under ``"text_from"``.

The JSON result (printed, and written atomically with ``--output``) holds ``bleu``, ``chrf``, ``signature``
(BLEU's), ``chrf_signature``, ``n_sentences``, and when translating the decoding settings and timing.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional, Sequence

from sacrebleu.metrics import BLEU, CHRF

from admin_ds.data import ParallelDataset, load_meta
from admin_ds.errors import UserError
from admin_ds.translate import (add_decoding_arguments, check_output_path, load_tokenizer, load_translator,
                                read_text_lines, translate_lines, write_text_atomic)


def score(hypotheses: Sequence[str], references: Sequence[str], tokenize: Optional[str] = None) -> dict:
    """Corpus BLEU and chrF of ``hypotheses`` against one reference each, with sacrebleu's signatures."""
    if len(hypotheses) != len(references):
        raise UserError(f"{len(hypotheses)} hypotheses but {len(references)} references; "
                        "line N of one must correspond to line N of the other")
    bleu = BLEU(tokenize=tokenize) if tokenize else BLEU()
    chrf = CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(bleu_score),
        "n_sentences": len(hypotheses),
    }


def split_text(data: str, split: str) -> tuple[list[str], list[str], str]:
    """(source lines, reference lines, where they came from) of a prepared dataset's split."""
    info = load_meta(data)  # checks that DIR is a prepared dataset
    meta = json.loads((info.data_dir / "meta.json").read_text(encoding="utf-8"))
    raw = (meta.get("raw") or {}).get(split)
    if raw:
        src = read_text_lines(str(info.data_dir / raw["src"]), f"meta.json raw {split} src")
        ref = read_text_lines(str(info.data_dir / raw["tgt"]), f"meta.json raw {split} tgt")
        return src, ref, "raw"
    dataset = ParallelDataset.load(data, split)
    src_tok = load_tokenizer(info.src_spm_path)
    tgt_tok = src_tok if info.tgt_spm_path == info.src_spm_path else load_tokenizer(info.tgt_spm_path)
    pairs = [dataset[i] for i in range(len(dataset))]
    return ([src_tok.decode(src.tolist()) for src, _ in pairs],
            [tgt_tok.decode(tgt.tolist()) for _, tgt in pairs], "binarised")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hyp", help="translations to score (skips translating)")
    parser.add_argument("--ref", help="reference translations, one a line")
    parser.add_argument("--checkpoint", help="translate with this checkpoint, then score")
    parser.add_argument("--data", help="prepared data directory holding the split to translate")
    parser.add_argument("--split", default="test", help="split of --data to translate (default test)")
    parser.add_argument("--src", help="source text to translate (instead of the split's)")
    parser.add_argument("--output", help="also write the JSON result here")
    parser.add_argument("--write-hyp", metavar="FILE", help="also write the translations here")
    parser.add_argument("--tokenize", help="sacrebleu BLEU tokenizer (default: sacrebleu's, 13a)")
    add_decoding_arguments(parser)


def main(args: argparse.Namespace) -> int:
    for path, flag in ((args.output, "--output"), (args.write_hyp, "--write-hyp")):
        if path:
            check_output_path(path, flag)
    result: dict = {}
    if args.hyp:
        if args.checkpoint or args.src or args.data:
            raise UserError("--hyp scores existing translations; it cannot be combined with "
                            "--checkpoint, --src or --data")
        if not args.ref:
            raise UserError("--hyp needs --ref FILE")
        hypotheses = read_text_lines(args.hyp, "--hyp")
        references = read_text_lines(args.ref, "--ref")
    elif args.checkpoint:
        if args.src or args.ref:
            if not (args.src and args.ref):
                raise UserError("--src and --ref go together")
            sources = read_text_lines(args.src, "--src")
            references = read_text_lines(args.ref, "--ref")
            text_from = "files"
        elif args.data:
            sources, references, text_from = split_text(args.data, args.split)
        else:
            raise UserError("--checkpoint needs --data DIR (with --split) or --src FILE --ref FILE")
        if len(sources) != len(references):
            raise UserError(f"{len(sources)} source lines but {len(references)} references")
        model, tokenizer, tgt_tokenizer = load_translator(args)
        start = time.perf_counter()
        hypotheses = translate_lines(model, tokenizer, sources, beam=args.beam, lenpen=args.lenpen,
                                     max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                                     max_tokens=args.max_tokens, tgt_tokenizer=tgt_tokenizer, progress=None)
        elapsed = time.perf_counter() - start
        result = {"checkpoint": str(args.checkpoint), "split": None if args.src else args.split,
                  "text_from": text_from, "beam": args.beam, "lenpen": args.lenpen,
                  "translate_seconds": round(elapsed, 3),
                  "sentences_per_second": round(len(sources) / max(elapsed, 1e-9), 2)}
        if args.write_hyp:
            write_text_atomic(args.write_hyp, "".join(h + "\n" for h in hypotheses))
    else:
        raise UserError("give --hyp FILE --ref FILE, or --checkpoint PATH with --data DIR or --src/--ref")
    result = {**score(hypotheses, references, args.tokenize), **result}
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    if args.output:
        write_text_atomic(args.output, text)
    return 0
