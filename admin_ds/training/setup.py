"""Turning a run's configs into what DeepSpeed is given: its config dict, the optimizer, the model config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

from admin_ds.checkpoints.rundir import TRAIN_CONFIG, latest_tag
from admin_ds.data import DataInfo
from admin_ds.errors import UserError
from admin_ds.io import read_json_object
from admin_ds.model import ModelConfig
from admin_ds.model.residual import omega_parameters
from admin_ds.training.config import ModelChoice, TrainConfig

# DeepSpeed computes the global gradient norm (which we log) only when clipping is on; a bound that is
# never reached multiplies gradients by exactly 1, so this clips nothing.
NO_CLIP = 1e12
OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}


def deepspeed_config(user_config: dict, cfg: TrainConfig) -> dict:
    """The user's DeepSpeed config (or {} for plain fp32 ZeRO-0) with what our flags decide filled in."""
    config = dict(user_config)
    if "train_micro_batch_size_per_gpu" not in config and "train_batch_size" not in config:
        # Batches are built by tokens, not rows; DeepSpeed only uses this for its own bookkeeping.
        config["train_micro_batch_size_per_gpu"] = 1
    if cfg.clip_norm > 0:
        config["gradient_clipping"] = cfg.clip_norm
    elif "gradient_clipping" not in config:
        config["gradient_clipping"] = NO_CLIP
    if "optimizer" in config:
        config["optimizer"] = optimizer_section(config["optimizer"], cfg)
    config.setdefault("steps_per_print", 10 ** 9)  # our own logging replaces DeepSpeed's
    refuse_compile_layers(cfg, config)
    return config


def optimizer_section(section: dict, cfg: TrainConfig) -> dict:
    """A DeepSpeed config's optimizer section with what our flags say: --lr always (the schedule's peak),
    --adam-betas and --weight-decay where given. --optimizer names a torch optimizer that this section would
    silently replace (DeepSpeed builds the optimizer the section names), so giving both is refused."""
    if cfg.optimizer is not None:
        raise UserError(f"--optimizer {cfg.optimizer} would not be used: the DeepSpeed config's optimizer section "
                        f"({section.get('type', 'no type')}) builds the optimizer; drop the flag or the section")
    params = {**section.get("params", {}), "lr": cfg.lr}
    if cfg.adam_betas is not None:
        params["betas"] = list(cfg.adam_betas)
    if cfg.weight_decay is not None:
        params["weight_decay"] = cfg.weight_decay
    return {**section, "params": params}


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig, config: dict) -> list:
    """What the optimizer trains. With --omega-lr-scale 1 (the default), one group of every parameter, ω
    included, under the same learning rate and weight decay, as the reference trains it. Otherwise two:
    everything but ω, then the Admin shortcut scales ω with ``lr_scale`` (read by our schedule).

    Returns a list of parameters, or of two param-group dicts."""
    refuse_changed_omega_lr_scale(cfg)
    params = list(model.parameters())
    if cfg.omega_lr_scale == 1.0:
        return params
    if "scheduler" in config:
        raise UserError("--omega-lr-scale needs our learning-rate schedule, but the DeepSpeed config has a "
                        "scheduler section that would set every group's rate: drop one of them")
    omegas = omega_parameters(model)
    if not omegas:
        raise UserError(f"--omega-lr-scale {cfg.omega_lr_scale} scales Admin's ω, but this model has none: "
                        "use it with --residual admin")
    omega_ids = {id(p) for p in omegas}
    rest = [p for p in params if id(p) not in omega_ids]
    return [{"params": rest}, {"params": omegas, "lr_scale": cfg.omega_lr_scale}]


def refuse_changed_omega_lr_scale(cfg: TrainConfig) -> None:
    """A resumed run keeps the --omega-lr-scale it was saved with: DeepSpeed restores every group's rate and
    the schedule's base rates from the checkpoint (a new scale would be silently ignored), and a different
    number of groups does not load at all (ZeRO fails deep inside with a layout error)."""
    save_dir, run_config = Path(cfg.save_dir), Path(cfg.save_dir) / TRAIN_CONFIG
    if not (cfg.resume and latest_tag(save_dir) is not None and run_config.is_file()):
        return
    saved = read_json_object(run_config, "run config").get("train", {}).get("omega_lr_scale", 1.0)
    if saved != cfg.omega_lr_scale:
        raise UserError(f"{save_dir} was trained with --omega-lr-scale {saved}, not {cfg.omega_lr_scale}: resume "
                        "with the same scale, or pass --no-resume to start afresh")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    config: dict) -> tuple[list, Optional[torch.optim.Optimizer]]:
    """What the optimizer trains (see parameter_groups; DeepSpeed gets it too), and a torch.optim optimizer
    over it, unless the DeepSpeed config defines one (FusedAdam on GPU; then None)."""
    parameters = parameter_groups(model, cfg, config)
    if "optimizer" in config:
        return parameters, None
    name, betas, weight_decay = cfg.torch_optimizer()
    return parameters, OPTIMIZER_CLASSES[name](parameters, lr=cfg.lr, betas=betas, weight_decay=weight_decay)


def resolve_model_config(choice: ModelChoice, save_dir: Path, data_info: DataInfo, resume: bool) -> ModelConfig:
    """A resumed run rebuilds the model it saved; a new one takes preset + data vocabulary + flags."""
    saved = save_dir / TRAIN_CONFIG
    if not (resume and latest_tag(save_dir) is not None and saved.is_file()):
        return choice.resolve(data_info)
    cfg = ModelConfig.from_dict(read_json_object(saved, "run config")["model"], source=str(saved))
    wanted = (data_info.src_vocab_size, data_info.tgt_vocab_size)
    if (cfg.src_vocab_size, cfg.tgt_vocab_size) != wanted:
        raise UserError(f"{save_dir} holds a model of vocabularies {cfg.src_vocab_size}/{cfg.tgt_vocab_size}, but "
                        f"--data {data_info.data_dir} has {wanted[0]}/{wanted[1]}: resume with the data it was "
                        "trained on, or pass --no-resume")
    return cfg


def checkpointing_from_config(model_cfg: ModelConfig, config: dict, flag: Optional[int]) -> ModelConfig:
    """A DeepSpeed config with an ``activation_checkpointing`` section turns on per-layer checkpointing
    unless --checkpoint-activations says otherwise. The section's own options (partitioning activations
    across model-parallel ranks, CPU checkpointing) belong to DeepSpeed's reentrant checkpoint, which
    drops gradients in this model (docs/deepspeed.md); the model uses torch's non-reentrant one."""
    if flag is None and "activation_checkpointing" in config and model_cfg.checkpoint_every == 0:
        return dataclasses.replace(model_cfg, checkpoint_every=1)
    return model_cfg


def refuse_compile_layers(cfg: TrainConfig, config: dict) -> None:
    """--compile-layers with a DeepSpeed config it cannot work under: a UserError that says why."""
    if cfg.compile_layers and int(config.get("zero_optimization", {}).get("stage", 0)) == 3:
        # Tried (DeepSpeed 0.19.8, admin-tiny, 4 steps): it runs, but ZeRO-3's parameter-gather hooks on every
        # module break each layer into dozens of graphs (73 graph breaks) and several frames hit dynamo's
        # recompile limit and fall back to eager: compile time with none of the fusion (docs/speed.md).
        raise UserError("--compile-layers does not work with ZeRO stage 3: DeepSpeed's parameter-gather hooks "
                        "break every layer's graph apart; use ZeRO-1/2, or drop --compile-layers")


class KeysRead(dict):
    """A config dict that records which top-level keys its reader asked for."""

    def __init__(self, values: dict):
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key, *default):
        self.read.add(key)
        return super().get(key, *default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)
