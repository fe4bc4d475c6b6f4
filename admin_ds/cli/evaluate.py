"""``admin-ds evaluate``: score translations with sacrebleu (BLEU and chrF, with their signatures).

Two modes:
  - ``--hyp FILE --ref FILE`` scores existing translations;
  - ``--checkpoint PATH`` translates first (same decoding flags and ``--engine`` as ``translate``):
    ``--src FILE --ref FILE``, or ``--data DIR --split SPLIT`` (see ``admin_ds.inference.scoring.split_text``
    for where its text comes from; the JSON says which under ``"text_from"``, and a note on stderr says
    when it is not the raw text); ``--lines N`` scores the first N lines only, as ``train --eval-bleu-lines``.

The JSON result (printed, and written atomically with ``--output``) holds ``bleu``, ``chrf``, ``signature``
(BLEU's), ``chrf_signature``, ``n_sentences``, and when translating the decoding settings and timing.
"""

from __future__ import annotations

import argparse
import json
import sys

from admin_ds.cli.args import add_options, options_from_args
from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.scoring import score, split_text, translate_and_score
from admin_ds.inference.translator import ENGINES
from admin_ds.io import check_output_path, read_text_lines, write_output_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hyp", help="translations to score (skips translating)")
    parser.add_argument("--ref", help="reference translations, one a line")
    parser.add_argument("--checkpoint", help="translate with this checkpoint, then score")
    parser.add_argument("--data", help="prepared data directory holding the split to translate")
    parser.add_argument("--split", default="test", help="split of --data to translate")
    parser.add_argument("--src", help="source text to translate (instead of the split's)")
    parser.add_argument("--lines", type=int, metavar="N", help="with --checkpoint: translate and score the first "
                                                               "N lines only (default: all)")
    parser.add_argument("--output", help="also write the JSON result here")
    parser.add_argument("--write-hyp", metavar="FILE", help="also write the translations here")
    parser.add_argument("--tokenize", help="sacrebleu BLEU tokenizer (default: sacrebleu's, 13a)")
    parser.add_argument("--engine", choices=ENGINES, default="admin-ds",
                        help="with --checkpoint: admin-ds (our beam search) or ctranslate2 (a model written by "
                             "`admin-ds convert --format ctranslate2`), as in `admin-ds translate`")
    add_options(parser, DecodingConfig, "decoding")


def _texts(args: argparse.Namespace) -> tuple[list[str], list[str], str]:
    """(sources, references, where they came from) for --checkpoint."""
    if args.src or args.ref:
        if not (args.src and args.ref):
            raise UserError("--src and --ref go together")
        return read_text_lines(args.src, "--src"), read_text_lines(args.ref, "--ref"), "files"
    if args.data:
        sources, references, text_from = split_text(args.data, args.split)
        if text_from != "raw":
            print(f"admin-ds evaluate: note: {args.data}'s meta.json records no raw {args.split} text (prepared "
                  "before it did): scoring against the split's ids decoded back to text", file=sys.stderr)
        return sources, references, text_from
    raise UserError("--checkpoint needs --data DIR (with --split) or --src FILE --ref FILE")


def main(args: argparse.Namespace) -> int:
    for path, flag in ((args.output, "--output"), (args.write_hyp, "--write-hyp")):
        if path:
            check_output_path(path, flag)
    if args.hyp:
        if args.checkpoint or args.src or args.data:
            raise UserError("--hyp scores existing translations; it cannot be combined with "
                            "--checkpoint, --src or --data")
        if not args.ref:
            raise UserError("--hyp needs --ref FILE")
        result = score(read_text_lines(args.hyp, "--hyp"), read_text_lines(args.ref, "--ref"), args.tokenize)
    elif args.checkpoint:
        decoding = options_from_args(DecodingConfig, args)  # the flags are checked before any file is read
        if args.lines is not None and args.lines < 1:
            raise UserError(f"--lines must be at least 1, got {args.lines}")
        sources, references, text_from = _texts(args)
        sources, references = sources[:args.lines], references[:args.lines]
        result, hypotheses = translate_and_score(args.checkpoint, decoding, sources, references, args.tokenize,
                                                 args.data, args.engine)
        result.update(text_from=text_from, split=None if args.src else args.split)
        if args.write_hyp:
            write_output_text(args.write_hyp, "".join(h + "\n" for h in hypotheses))
    else:
        raise UserError("give --hyp FILE --ref FILE, or --checkpoint PATH with --data DIR or --src/--ref")
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    if args.output:
        write_output_text(args.output, text)
    return 0
