"""``admin-ds profile``: the reference's two-stage flow. Profile ω on the first training batch in one
process (no DeepSpeed) and write a ``profile.ratio.init``-format file for ``train --omega-profile``.

``train`` does the same inside the launch (the rank-0 hook), so this command is only needed to inspect ω
or to reuse one profile across runs. Same --seed, --arch and --max-tokens as the training run give the
same initial weights and first batch as a one-rank training run. With ``--omega-init logn|sqrtn|one`` it
writes admin-torch's closed form for the model's depth instead (no forward pass; docs/admin.md).
"""

from __future__ import annotations

import argparse

from admin_ds.cli.args import add_data_options, add_model_options, data_config_from_args, model_choice_from_args
from admin_ds.model import OMEGA_INITS
from admin_ds.training.profiling import profile_first_batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_data_options(parser)
    parser.add_argument("--out", required=True, help="profile file to write (profile.ratio.init format)")
    parser.add_argument("--no-dropout", dest="profile_dropout", action="store_false",
                        help="profile with dropout off (deterministic); the reference profiles in training mode")
    parser.add_argument("--split", default="train", help="split whose first batch is profiled")
    parser.add_argument("--omega-init", default="profile", choices=OMEGA_INITS,
                        help="profile the first batch, or write the closed form `train --omega-init` would start "
                             "from (logn, sqrtn, one; docs/admin.md)")


def main(args: argparse.Namespace) -> int:
    data = data_config_from_args(args)
    profile = profile_first_batch(model_choice_from_args(args), data, args.split, args.profile_dropout,
                                  args.omega_init)
    profile.write(args.out)
    print(f"{profile.summary()}; wrote {args.out}")
    return 0
