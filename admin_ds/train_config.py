"""Training-loop options: one dataclass, its flags, and validation at the edge."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Optional

from admin_ds.errors import UserError

OPTIMIZERS = ("adam", "adamw", "radam")


@dataclass
class TrainConfig:
    save_dir: str
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = None
    max_minutes: Optional[float] = None
    save_interval: int = 1000
    keep_last: int = 5
    validate_interval: Optional[int] = None  # default: every save
    log_interval: int = 10
    lr: float = 5e-4
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    optimizer: str = "adam"
    adam_betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    label_smoothing: float = 0.1
    omega_profile: Optional[str] = None
    profile_dropout: bool = True
    zero_init: bool = False
    resume: bool = True
    tensorboard: bool = True
    valid_split: str = "valid"

    def validate(self) -> "TrainConfig":
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise UserError("give --max-steps, --max-epochs or --max-minutes: training needs an end")
        for name in ("max_steps", "max_epochs", "max_minutes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("save_interval", "keep_last", "log_interval"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.validate_interval is not None and self.validate_interval < 0:
            raise UserError(f"--validate-interval must be >= 0, got {self.validate_interval}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.warmup_updates < 0:
            raise UserError(f"--warmup-updates must be >= 0, got {self.warmup_updates}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.clip_norm < 0:
            raise UserError(f"--clip-norm must be >= 0, got {self.clip_norm}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _betas(text: str) -> tuple[float, float]:
    try:
        beta1, beta2 = (float(x) for x in text.strip("()[] ").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like '0.9,0.98', got {text!r}") from None
    return beta1, beta2


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--save-dir", required=True, help="checkpoints, metrics.jsonl, omega.profile, tensorboard/")
    group.add_argument("--max-steps", type=int, help="stop after this many optimizer updates")
    group.add_argument("--max-epochs", type=int, help="stop after this many epochs")
    group.add_argument("--max-minutes", type=float,
                       help="stop (and save) after this much training time, e.g. inside a SLURM time limit")
    group.add_argument("--save-interval", type=int, default=1000, help="save a checkpoint every N updates")
    group.add_argument("--keep-last", type=int, default=5, help="keep the newest K checkpoints")
    group.add_argument("--validate-interval", type=int, help="validation loss every N updates (default: at saves; 0 = never)")
    group.add_argument("--log-interval", type=int, default=10, help="log every N updates")
    group.add_argument("--lr", type=float, default=5e-4, help="peak learning rate after warm-up")
    group.add_argument("--warmup-updates", type=int, default=4000, help="linear warm-up, then inverse square root")
    group.add_argument("--warmup-init-lr", type=float, default=1e-7, help="learning rate at update 0")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                       help="torch.optim optimizer, used when the DeepSpeed config has no optimizer section")
    group.add_argument("--adam-betas", type=_betas, default=(0.9, 0.98), help="Adam betas, e.g. 0.9,0.98")
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--clip-norm", type=float, default=0.0, help="gradient clipping (0 = off; Admin needs none)")
    group.add_argument("--label-smoothing", type=float, default=0.1)
    group.add_argument("--omega-profile", help="read ω from this profile file instead of profiling on rank 0")
    group.add_argument("--profile-no-dropout", dest="profile_dropout", action="store_false",
                       help="profile ω with dropout off (deterministic) instead of in training mode")
    group.add_argument("--zero-init", action="store_true",
                       help="ZeRO-3: build the model partitioned (deepspeed.zero.Init)")
    group.add_argument("--no-resume", dest="resume", action="store_false",
                       help="start afresh even if --save-dir holds a checkpoint")
    group.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    group.add_argument("--valid-split", default="valid")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    return TrainConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)}).validate()
