"""``admin-ds translate``: beam search over a text file, one sentence a line, output in input order.

Empty input lines give empty output lines; with ``--nbest N`` every input line gives N consecutive output
lines, best first. The sentencepiece model is found as ``admin_ds.checkpoints.rundir.find_spm`` says:
``--spm`` (and ``--tgt-spm``), else ``--data``'s, else beside the checkpoint or its run.
``--engine ctranslate2`` translates a model written by ``admin-ds convert --format ctranslate2`` with
CTranslate2 instead (``admin_ds.inference.ctranslate2_engine``; docs/deploy.md).
"""

from __future__ import annotations

import argparse
import logging
import time

from admin_ds.cli.args import add_options, options_from_args
from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.ctranslate2_engine import load_ct2, translate_ct2
from admin_ds.inference.translate import load_translator, translate_with
from admin_ds.io import check_output_path, read_text_lines, write_output_text

ENGINES = ("admin-ds", "ctranslate2")  # ctranslate2 is imported only when that engine runs

log = logging.getLogger("admin_ds")

PROGRESS_MIN_LINES = 200  # below this a progress bar is noise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="anything admin_ds.load_model accepts (export or DeepSpeed directory)")
    parser.add_argument("--input", default="-", help="text to translate, one sentence a line (- is stdin)")
    parser.add_argument("--output", default="-", help="where to write translations (- is stdout)")
    parser.add_argument("--nbest", type=int, default=1, help="write this many hypotheses per line, best first")
    parser.add_argument("--data", help="prepared data directory whose sentencepiece model(s) to use")
    parser.add_argument("--engine", choices=ENGINES, default="admin-ds",
                        help="admin-ds: our beam search on any checkpoint; ctranslate2: a model written by "
                             "`admin-ds convert --format ctranslate2` (docs/deploy.md)")
    add_options(parser, DecodingConfig, "decoding")


def main(args: argparse.Namespace) -> int:
    decoding = options_from_args(DecodingConfig, args)
    lines = read_text_lines(args.input, "--input")
    check_output_path(args.output, "--output")
    if args.engine == "ctranslate2":
        if args.data:
            raise UserError("--data does not apply to --engine ctranslate2 (the model carries its "
                            "sentencepiece model; or pass --spm)")
        model = load_ct2(args.checkpoint, decoding)
        start = time.perf_counter()
        hyps = translate_ct2(model, lines, decoding, nbest=args.nbest)
    else:
        model, tokenizer, tgt_tokenizer = load_translator(args.checkpoint, decoding, args.data)
        start = time.perf_counter()
        hyps = translate_with(model, tokenizer, tgt_tokenizer, lines, decoding, nbest=args.nbest,
                              progress=None if len(lines) >= PROGRESS_MIN_LINES else False)
    elapsed = time.perf_counter() - start
    write_output_text(args.output, "".join(text + "\n" for sentence in hyps for text, _ in sentence))
    log.info("translated %d lines in %.1f s (%.1f sentences/s)", len(lines), elapsed,
             len(lines) / max(elapsed, 1e-9))
    return 0
