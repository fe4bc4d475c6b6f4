"""``admin-ds average-checkpoints``: the element-wise mean of several checkpoints' weights, as one fp32 export.

The Admin paper evaluates the average of the last checkpoints of a run (fairseq's average_checkpoints.py).
Inputs are anything ``admin_ds.load_model`` accepts; ``--save-dir DIR --last N`` picks the N
``DIR/global_stepK`` directories with the highest K. Sums are accumulated in float64, one model in memory
at a time besides the running sum, and the mean is stored in fp32.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Iterable

import torch

from admin_ds.errors import UserError
from admin_ds.model import TranslationModel

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"global_step(\d+)")
# Settings that only matter while training; checkpoints that differ in them still average.
TRAINING_ONLY = ("dropout", "attention_dropout", "activation_dropout", "checkpoint_every")


def _architecture(model: TranslationModel) -> dict:
    config = model.cfg.to_dict()
    return {key: value for key, value in config.items() if key not in TRAINING_ONLY}


def average_models(models: Iterable[TranslationModel]) -> TranslationModel:
    """A new fp32 model (eval mode, CPU) whose every floating-point tensor is the mean over ``models``.

    ``models`` may be a generator, so that only one checkpoint is loaded at a time. All must share one
    architecture (UserError otherwise); the result takes the first one's config.
    """
    total: dict[str, torch.Tensor] = {}
    first = None
    count = 0
    for model in models:
        state = model.state_dict()
        if first is None:
            first = model
            total = {key: value.detach().to("cpu", torch.float64) if value.is_floating_point()
                     else value.detach().cpu().clone() for key, value in state.items()}
        else:
            expected, found = _architecture(first), _architecture(model)
            if found != expected:
                diff = ", ".join(f"{key} {expected[key]!r} vs {found[key]!r}"
                                 for key in expected if expected[key] != found[key])
                raise UserError(f"cannot average checkpoints of different models: checkpoint {count + 1} "
                                f"differs from the first in {diff}")
            for key, value in state.items():
                if value.is_floating_point():
                    total[key] += value.detach().to("cpu", torch.float64)
        count += 1
    if first is None:
        raise UserError("no checkpoints to average")
    averaged = TranslationModel(first.cfg)
    averaged.load_state_dict({key: value.div(count).float() if value.is_floating_point() else value
                              for key, value in total.items()})
    return averaged.eval()


def step_checkpoints(save_dir: str | Path, last: int) -> list[Path]:
    """The ``last`` ``global_stepN`` subdirectories of ``save_dir`` with the highest N, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        raise UserError(f"--save-dir {save_dir} does not exist")
    if last < 1:
        raise UserError(f"--last must be at least 1, got {last}")
    steps = sorted((int(match.group(1)), path) for path in save_dir.iterdir()
                   if path.is_dir() and (match := STEP_DIR.fullmatch(path.name)))
    if len(steps) < last:
        raise UserError(f"--last {last} asks for more checkpoints than the {len(steps)} global_step* "
                        f"directories in {save_dir}")
    return [path for _, path in steps[-last:]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", nargs="+", metavar="CKPT", help="checkpoints to average")
    source.add_argument("--save-dir", help="a training run's directory: average its last --last global_step*")
    parser.add_argument("--last", type=int, help="with --save-dir: how many of the newest checkpoints")
    parser.add_argument("--output", required=True, help="directory for the averaged fp32 export")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")


def main(args: argparse.Namespace) -> int:
    import admin_ds
    from admin_ds.checkpoint import write_export
    from admin_ds.translate import find_spm

    if args.save_dir:
        if args.last is None:
            raise UserError("--save-dir needs --last N")
        paths = step_checkpoints(args.save_dir, args.last)
    else:
        if args.last is not None:
            raise UserError("--last goes with --save-dir, not --inputs")
        paths = [Path(p) for p in args.inputs]
    if Path(args.output).exists() and not args.force:
        raise UserError(f"output {args.output} exists; pass --force to replace it")
    for path in paths:
        if not path.exists():
            raise UserError(f"checkpoint not found: {path}")

    def load_each():
        for path in paths:
            logger.info("loading %s", path)
            yield admin_ds.load_model(path)

    model = average_models(load_each())
    extra = {"averaged_from": [str(p) for p in paths]}
    try:  # remember the sentencepiece model(s), so that translate finds them beside the average
        src_spm, tgt_spm = find_spm(paths[-1])
        extra["spm_model"] = {"src": str(src_spm.resolve()), "tgt": str(tgt_spm.resolve())}
    except UserError:
        pass
    write_export(model, args.output, force=args.force, extra=extra)
    print(f"averaged {len(paths)} checkpoints into {args.output}")
    return 0
