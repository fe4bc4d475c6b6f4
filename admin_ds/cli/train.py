"""``admin-ds train``: train with DeepSpeed.

Also runs as ``python -m admin_ds.train ...``, ``deepspeed --num_gpus N --module admin_ds.train ...``,
``torchrun --nproc_per_node N -m admin_ds.train ...`` and under ``srun``; it accepts DeepSpeed's own
``--deepspeed_config`` and the launcher's ``--local_rank``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from admin_ds.cli.args import (
    add_data_options,
    add_model_options,
    add_options,
    data_config_from_args,
    model_choice_from_args,
    options_from_args,
)
from admin_ds.training.config import DataConfig, FailureConfig, ModelChoice, TrainConfig
from admin_ds.training.engine import add_deepspeed_arguments
from admin_ds.training.loop import train
from admin_ds.training.metrics import setup_logging
from admin_ds.training.rendezvous import fill_rendezvous_env
from admin_ds.training.stopping import RunStopped, parse_stop_signals, stop_signals_caught


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_data_options(parser)
    add_options(parser, TrainConfig, "training")
    add_options(parser, FailureConfig, "failure handling")
    add_deepspeed_arguments(parser)


def run_configs(args: argparse.Namespace) -> tuple[TrainConfig, DataConfig, ModelChoice, Optional[str],
                                                   FailureConfig]:
    """What ``Trainer`` / ``train`` take, from the parsed flags."""
    return (options_from_args(TrainConfig, args), data_config_from_args(args), model_choice_from_args(args),
            getattr(args, "deepspeed_config", None), options_from_args(FailureConfig, args))


def main(args: argparse.Namespace) -> int:
    os.environ.update(fill_rendezvous_env(os.environ))  # the one place a command writes the environment
    setup_logging(int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))))
    configs = run_configs(args)
    try:
        # From before the model is built to the exit: a stop signal saves first (docs/contracts.md §10).
        with stop_signals_caught(parse_stop_signals(configs[-1].stop_signals), until_exit_once_stopped=True):
            train(*configs)
    except RunStopped as stop:  # saved and closed: "stopped to be resumed", not a failure (contracts.md §10)
        print(f"admin-ds train: {stop}; run the same command to resume", file=sys.stderr)
        return stop.exit_status
    return 0
