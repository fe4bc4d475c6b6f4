"""``admin-ds translate``: beam search over a text stream, one sentence a line, output in input order.

Empty input lines give empty output lines; with ``--nbest N`` every input line gives N consecutive output
lines, best first. The sentencepiece model is found as ``admin_ds.checkpoints.rundir.find_spm`` says:
``--spm`` (and ``--tgt-spm``), else ``--data``'s, else beside the checkpoint or its run.
``--engine ctranslate2`` translates a model written by ``admin-ds convert --format ctranslate2`` with
CTranslate2 instead (docs/deploy.md); both go through ``admin_ds.Translator``.

The input is read in chunks of at most ``--buffer-size`` lines (``admin_ds.io.read_line_chunks``: a chunk
also ends when no more input is waiting) and each chunk's translations are written, in input order, as soon
as they are done: stdout is flushed after every chunk, so lines typed at a terminal come back at once and a
pipeline runs in memory that does not grow with its input. A file ``--output`` is written under a temporary
name and renamed when the whole input is translated.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tqdm import tqdm

from admin_ds.cli.args import add_options, options_from_args
from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.translator import ENGINES, Translator
from admin_ds.io import check_output_path, output_stream, read_line_chunks

log = logging.getLogger("admin_ds")

BUFFER_SIZE = 2000  # lines per chunk: enough for full batches, small enough to stream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="anything admin_ds.load_model accepts (export or DeepSpeed directory)")
    parser.add_argument("--input", default="-", help="text to translate, one sentence a line (- is stdin)")
    parser.add_argument("--output", default="-", help="where to write translations (- is stdout)")
    parser.add_argument("--nbest", type=int, default=1, help="write this many hypotheses per line, best first")
    parser.add_argument("--buffer-size", type=int, default=BUFFER_SIZE,
                        help="translate the input in chunks of at most this many lines, writing each chunk's "
                             "translations when done (a chunk also ends when no more input is waiting)")
    parser.add_argument("--data", help="prepared data directory whose sentencepiece model(s) to use")
    parser.add_argument("--engine", choices=ENGINES, default="admin-ds",
                        help="admin-ds: our beam search on any checkpoint; ctranslate2: a model written by "
                             "`admin-ds convert --format ctranslate2` (docs/deploy.md)")
    add_options(parser, DecodingConfig, "decoding")


def main(args: argparse.Namespace) -> int:
    decoding = options_from_args(DecodingConfig, args)
    if args.buffer_size < 1:
        raise UserError(f"--buffer-size must be at least 1 line, got {args.buffer_size}")
    check_output_path(args.output, "--output")
    chunks = read_line_chunks(args.input, "--input", args.buffer_size)  # checks --input before the model loads
    translator = Translator(args.checkpoint, args.engine, data=args.data, decoding=decoding)
    lines, elapsed = 0, 0.0
    with output_stream(args.output) as write, tqdm(unit="sent", disable=None, file=sys.stderr, leave=False) as bar:
        for chunk in chunks:
            start = time.perf_counter()
            hyps = translator.translate_nbest(chunk, nbest=args.nbest)
            elapsed += time.perf_counter() - start
            write("".join(text + "\n" for sentence in hyps for text, _ in sentence))
            lines += len(chunk)
            bar.update(len(chunk))
    log.info("translated %d lines in %.1f s (%.1f sentences/s)", lines, elapsed, lines / max(elapsed, 1e-9))
    return 0
