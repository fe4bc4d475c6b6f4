"""What a training run is told: the data and batching, the model choice, the loop's options.

One dataclass per concern, each validated on its own; ``admin_ds.cli.args`` builds the flags from them.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Optional

from admin_ds.data import DataInfo
from admin_ds.errors import UserError
from admin_ds.model import OMEGA_INITS, ModelConfig, preset_config
from admin_ds.options import option
from admin_ds.training.stopping import parse_stop_signals

OPTIMIZERS = ("adam", "adamw", "radam")
# What a torch optimizer gets when its flags are left out (the Transformer's betas, as both Admin references
# train); a DeepSpeed config's optimizer section keeps its own values instead (training/setup.py).
DEFAULT_OPTIMIZER, DEFAULT_BETAS, DEFAULT_WEIGHT_DECAY = "adam", (0.9, 0.98), 0.0
BEST_METRICS = ("valid_loss", "bleu")  # lower is better for valid_loss, higher for bleu (training/best.py)


def parse_betas(text: str) -> tuple[float, float]:
    """"0.9,0.98" -> (0.9, 0.98): the flag's type for Adam's betas."""
    try:
        beta1, beta2 = (float(x) for x in text.strip("()[] ").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like '0.9,0.98', got {text!r}") from None
    return beta1, beta2


@dataclass
class DataConfig:
    """Which prepared dataset, how it is cut into batches, and the run's seed."""

    data: str = option(help="a directory written by `admin-ds prepare`")
    max_tokens: int = option(4096, help="tokens per batch and rank, padding included")
    seed: int = option(1, help="seed for initialisation, dropout and batch order")

    def validate(self) -> DataConfig:
        if self.max_tokens < 1:
            raise UserError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.seed < 0:
            raise UserError(f"--seed must be non-negative, got {self.seed}")
        return self


@dataclass
class ModelChoice:
    """A preset plus the fields given on the command line; the data decides vocabularies and special ids."""

    arch: str = "admin-6-6"
    overrides: dict = field(default_factory=dict)  # ModelConfig field -> value; None means "the preset's"

    def resolve(self, data_info: Optional[DataInfo] = None) -> ModelConfig:
        """The preset, then the vocabulary of the prepared data, then explicit flags, validated."""
        overrides = {k: v for k, v in self.overrides.items() if v is not None}
        if data_info is not None:
            ids = data_info.special_ids
            overrides.update(src_vocab_size=data_info.src_vocab_size, tgt_vocab_size=data_info.tgt_vocab_size,
                             share_all_embeddings=data_info.joint_vocab, pad_id=ids.pad, bos_id=ids.bos,
                             eos_id=ids.eos)
            overrides.setdefault("max_positions", max(data_info.max_positions + 2, 8))
        return preset_config(self.arch, **overrides)


@dataclass
class TrainConfig:
    """Training-loop options."""

    save_dir: str = option(help="run directory: checkpoints, metrics.jsonl, omega.profile, tensorboard/")
    max_steps: Optional[int] = option(None, help="stop after this many optimizer updates")
    max_epochs: Optional[int] = option(None, help="stop after this many epochs")
    max_minutes: Optional[float] = option(None, help="stop (and save) after this much training time, e.g. "
                                                     "inside a SLURM time limit; the clock is read at log steps")
    save_interval: int = option(1000, help="save a checkpoint every N updates")
    keep_last: int = option(5, help="keep the newest K checkpoints")
    validate_interval: Optional[int] = option(None, help="validation loss every N updates (default: at every "
                                                         "save; 0 = never)")
    log_interval: int = option(10, help="log every N updates")
    peak_tflops: Optional[float] = option(None, help="peak TFLOP/s of one device (dense bf16/fp16, as datasheets "
                                                     "quote it) for the training rows' mfu (default: a table of "
                                                     "common GPUs; none on a CPU)", metavar="TFLOPS")
    lr: float = option(5e-4, help="peak learning rate after warm-up")
    warmup_updates: int = option(4000, help="linear warm-up, then inverse square root")
    warmup_init_lr: float = option(1e-7, help="learning rate at update 0")
    optimizer: Optional[str] = option(None, help=f"torch.optim optimizer (none given: {DEFAULT_OPTIMIZER}); "
                                                 "refused beside a DeepSpeed config's optimizer section, which "
                                                 "builds its own", choices=OPTIMIZERS)
    adam_betas: Optional[tuple[float, float]] = option(None, help="Adam betas, e.g. 0.9,0.98 (none given: the "
                                                                  "DeepSpeed config's, else "
                                                                  f"{DEFAULT_BETAS[0]},{DEFAULT_BETAS[1]})",
                                                       type=parse_betas)
    weight_decay: Optional[float] = option(None, help="weight decay of the optimizer (none given: the DeepSpeed "
                                                      f"config's, else {DEFAULT_WEIGHT_DECAY:g})")
    clip_norm: float = option(0.0, help="gradient clipping (0 = off; Admin needs none)")
    label_smoothing: float = option(0.1, help="label smoothing ε of the cross-entropy")
    omega_profile: Optional[str] = option(None, help="read ω from this profile file instead of profiling on "
                                                     "rank 0")
    omega_init: str = option("profile", choices=OMEGA_INITS,
                             help="how ω starts: profiled on rank 0's first batch, or admin-torch's closed form "
                                  "for a stack of N residual sublayers, no profiling: logn sqrt((N+1)/ln(N+1)-1), "
                                  "sqrtn sqrt(N), one 1 (docs/admin.md)")
    omega_lr_scale: float = option(1.0, help="ω's learning rate as a multiple of --lr, warm-up and decay included "
                                             "(1 = one group for all parameters, as the reference trains it; "
                                             "0 = ω frozen at its start; docs/admin.md)")
    profile_dropout: bool = option(True, help="profile ω with dropout off (deterministic) instead of in "
                                              "training mode", flags=("--profile-no-dropout",))
    compile_layers: bool = option(False, help="torch.compile each encoder and decoder layer (one graph per "
                                              "layer class; docs/speed.md); not with ZeRO-3 (default: off)")
    zero_init: bool = option(False, help="ZeRO-3: build the model partitioned (deepspeed.zero.Init)")
    resume: bool = option(True, help="start afresh even if --save-dir holds a checkpoint", flags=("--no-resume",))
    tensorboard: bool = option(True, help="write no TensorBoard scalars", flags=("--no-tensorboard",))
    valid_split: str = option("valid", help="split of --data that validation reads")
    best_metric: Optional[str] = option(None, help="keep SAVE_DIR/best/, an fp32 export of the weights with the "
                                                   "best value of this metric so far (judged at each validation; "
                                                   "bleu needs --eval-bleu)", choices=BEST_METRICS)
    patience: Optional[int] = option(None, help="stop (after saving) once N validations in a row have not "
                                                "improved on the best --best-metric (valid_loss if not given)")
    eval_bleu: bool = option(False, help="at every validation also translate the valid split's raw source text "
                                         "with our beam search and score BLEU and chrF (sacrebleu) against its "
                                         "raw reference (training/validation_bleu.py)")
    eval_bleu_beam: int = option(4, help="--eval-bleu: the beam size")
    eval_bleu_lines: Optional[int] = option(None, help="--eval-bleu: score the first N lines of the valid split "
                                                       "only (default: all)")

    def validate(self) -> TrainConfig:
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise UserError("give --max-steps, --max-epochs or --max-minutes: training needs an end")
        for name in ("max_steps", "max_epochs", "max_minutes"):
            value = getattr(self, name)
            if value is not None and (value <= 0 if name == "max_minutes" else value < 1):
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("save_interval", "keep_last", "log_interval"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.peak_tflops is not None and not 0.0 < self.peak_tflops < float("inf"):
            raise UserError(f"--peak-tflops must be a positive number of TFLOP/s, got {self.peak_tflops}")
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
        if self.patience is not None and self.patience < 1:
            raise UserError(f"--patience must be positive, got {self.patience}")
        if self.best_metric is not None and self.best_metric not in BEST_METRICS:
            raise UserError(f"--best-metric must be one of {', '.join(BEST_METRICS)}, got {self.best_metric}")
        if (self.patience is not None or self.best_metric or self.eval_bleu) and self.validate_interval == 0:
            flag = "patience" if self.patience is not None else "best-metric" if self.best_metric else "eval-bleu"
            raise UserError(f"--{flag} needs validation, but --validate-interval is 0")
        self._validate_eval_bleu()
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.weight_decay is not None and not 0.0 <= self.weight_decay < float("inf"):
            raise UserError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.adam_betas is not None and not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise UserError(f"--adam-betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not 0.0 <= self.omega_lr_scale < float("inf"):
            raise UserError(f"--omega-lr-scale must be a finite number >= 0, got {self.omega_lr_scale}")
        if self.omega_init not in OMEGA_INITS:
            raise UserError(f"--omega-init must be one of {', '.join(OMEGA_INITS)}, got {self.omega_init!r}")
        if self.omega_init != "profile" and self.omega_profile:
            raise UserError(f"--omega-profile and --omega-init {self.omega_init} both say where ω starts; give one")
        return self

    def _validate_eval_bleu(self) -> None:
        if self.best_metric == "bleu" and not self.eval_bleu:
            raise UserError("--best-metric bleu needs --eval-bleu (BLEU is only computed with it)")
        if self.eval_bleu_beam < 1:
            raise UserError(f"--eval-bleu-beam must be at least 1, got {self.eval_bleu_beam}")
        if self.eval_bleu_lines is not None and self.eval_bleu_lines < 1:
            raise UserError(f"--eval-bleu-lines must be at least 1 (or left out for all lines), got "
                            f"{self.eval_bleu_lines}")

    def torch_optimizer(self) -> tuple[str, tuple[float, float], float]:
        """(name, betas, weight decay) of the torch optimizer, the defaults filled in where a flag was left out;
        for runs whose DeepSpeed config has no optimizer section."""
        return (self.optimizer or DEFAULT_OPTIMIZER,
                self.adam_betas if self.adam_betas is not None else DEFAULT_BETAS,
                self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY)

    def omega_given_by(self) -> Optional[str]:
        """The flag that sets ω's start without profiling (a file or a closed form); None: profile."""
        if self.omega_profile:
            return "--omega-profile"
        return None if self.omega_init == "profile" else f"--omega-init {self.omega_init}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FailureConfig:
    """What training does when updates go bad or a rank stops answering (README "Failure handling")."""

    skip_patience: int = option(25, help="this many skipped updates in a row (non-finite loss or gradients, "
                                         "or an fp16 loss scale at its floor) count as divergence")
    max_rollbacks: int = option(3, help="on divergence, go back to the last checkpoint with a lower learning "
                                        "rate at most this often, then stop (0 = stop at once)")
    rollback_lr_factor: float = option(0.5, help="multiply the learning rate by this at each rollback")
    dist_timeout_minutes: float = option(30.0, help="a collective that waits longer than this (a rank died "
                                                    "or hangs) stops the run with an error")
    stop_signals: str = option("SIGTERM,SIGUSR1", help="on these signals (comma-separated, or 'none') every "
                                                       "rank stops after the current update, saves a checkpoint "
                                                       "and exits with status 75 (resume by running again)")
    lock_stale_minutes: float = option(10.0, help="a run directory's lock held on another host is taken over "
                                                  "after this long without its heartbeat (one a minute)")
    stop_check_interval: int = option(10, help="with several ranks, they agree on a stop request every N "
                                               "updates (one small all-reduce and a host read each time; one "
                                               "rank checks its own flag after every update)")

    def validate(self) -> FailureConfig:
        if self.skip_patience < 1:
            raise UserError(f"--skip-patience must be positive, got {self.skip_patience}")
        if self.max_rollbacks < 0:
            raise UserError(f"--max-rollbacks must be >= 0, got {self.max_rollbacks}")
        if not 0.0 < self.rollback_lr_factor <= 1.0:
            raise UserError(f"--rollback-lr-factor must be in (0, 1], got {self.rollback_lr_factor}")
        if not self.dist_timeout_minutes > 0:
            raise UserError(f"--dist-timeout-minutes must be positive, got {self.dist_timeout_minutes}")
        if not self.lock_stale_minutes > 0:
            raise UserError(f"--lock-stale-minutes must be positive, got {self.lock_stale_minutes}")
        if self.stop_check_interval < 1:
            raise UserError(f"--stop-check-interval must be positive, got {self.stop_check_interval}")
        parse_stop_signals(self.stop_signals)
        return self
