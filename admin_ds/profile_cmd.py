"""``admin-ds profile``: the reference's two-stage flow. Profile ω on the first training batch in one
process (no DeepSpeed) and write a ``profile.ratio.init``-format file for ``train --omega-profile``.

``train`` does the same inside the launch (the rank-0 hook), so this command is only needed to inspect ω
or to reuse one profile across runs. Same --seed, --arch and --max-tokens as the training run give the
same initial weights and first batch as a one-rank training run.
"""

from __future__ import annotations

import argparse
import logging

import torch

from admin_ds.admin import profile_omega
from admin_ds.data import BatchIterator, ParallelDataset, load_meta
from admin_ds.errors import UserError
from admin_ds.model import TranslationModel
from admin_ds.model_args import add_data_arguments, add_model_arguments, model_config_from_args

log = logging.getLogger("admin_ds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="profile file to write (profile.ratio.init format)")
    parser.add_argument("--no-dropout", dest="profile_dropout", action="store_false",
                        help="profile with dropout off (deterministic); the reference profiles in training mode")
    parser.add_argument("--split", default="train", help="split whose first batch is profiled")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = load_meta(args.data)
    cfg = model_config_from_args(args, info)
    if cfg.residual != "admin":
        raise UserError(f"profiling computes Admin's ω; --residual {cfg.residual} has none")
    torch.manual_seed(args.seed)  # the same initial weights as `train --seed` builds
    model = TranslationModel(cfg)
    batches = BatchIterator.build(ParallelDataset.load(args.data, args.split), args.max_tokens, seed=args.seed)
    batch = next(iter(batches))
    profile = profile_omega(model, batch.src_tokens, batch.tgt_input, dropout=args.profile_dropout)
    profile.write(args.out)
    print(f"{profile.summary()}; wrote {args.out}")
    return 0
