"""``admin-ds train``: the DeepSpeed training loop.

Runs as ``admin-ds train ...``, ``python -m admin_ds.train ...``, ``deepspeed --num_gpus N --module
admin_ds.train ...``, ``torchrun --nproc_per_node N -m admin_ds.train ...`` and under ``srun``.

Order of events: join the process group; read the data; build the model (partitioned under --zero-init);
``deepspeed.initialize``; resume from ``latest`` if there is one (ω comes back with the weights), else for
an Admin model run the rank-0 ω hook on the first batch (or read --omega-profile); then train, logging
on rank 0, validating and saving every N updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from admin_ds import engine as ds
from admin_ds.admin import OmegaProfile
from admin_ds.data import BatchIterator, ParallelDataset, load_meta
from admin_ds.errors import UserError
from admin_ds.metrics import MetricsWriter
from admin_ds.model import ModelConfig, TranslationModel
from admin_ds.model_args import add_data_arguments, add_model_arguments, model_config_from_args
from admin_ds.schedule import inverse_sqrt_schedule
from admin_ds.train_config import TrainConfig, add_train_arguments, train_config_from_args

log = logging.getLogger("admin_ds")

RUN_CONFIG = "train_config.json"
DS_CONFIG_COPY = "ds_config.json"
NO_CLIP = 1e12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    add_train_arguments(parser)
    ds.add_deepspeed_arguments(parser)


# --- set-up -------------------------------------------------------------------------------------------
def deepspeed_config(args: argparse.Namespace, cfg: TrainConfig) -> dict:
    """The user's --deepspeed_config (or a plain fp32 default) with what our flags decide filled in."""
    config = ds.read_ds_config(getattr(args, "deepspeed_config", None))
    if "train_micro_batch_size_per_gpu" not in config and "train_batch_size" not in config:
        # Batches are built by tokens, not rows; DeepSpeed only uses this for its own bookkeeping.
        config["train_micro_batch_size_per_gpu"] = 1
    if cfg.clip_norm > 0:
        config["gradient_clipping"] = cfg.clip_norm
    elif "gradient_clipping" not in config:
        # DeepSpeed computes the global gradient norm (which we log) only when clipping is on; a bound
        # that is never reached multiplies gradients by exactly 1, so this clips nothing.
        config["gradient_clipping"] = NO_CLIP
    if "optimizer" in config:
        config["optimizer"].setdefault("params", {})["lr"] = cfg.lr
    config.setdefault("steps_per_print", 10 ** 9)  # our own logging replaces DeepSpeed's
    return config


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, config: dict):
    """A torch.optim optimizer, unless the DeepSpeed config defines one (FusedAdam on GPU)."""
    if "optimizer" in config:
        return None
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
    return kinds[cfg.optimizer](model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resolve_model_config(args: argparse.Namespace, save_dir: Path, data_info, resume: bool) -> ModelConfig:
    """A resumed run rebuilds the model it saved; a new one takes preset + data vocabulary + flags."""
    saved = save_dir / RUN_CONFIG
    if resume and (save_dir / "latest").is_file() and saved.is_file():
        return ModelConfig.from_dict(json.loads(saved.read_text())["model"], source=str(saved))
    return model_config_from_args(args, data_info)


def checkpointing_from_config(model_cfg: ModelConfig, config: dict, flag: Optional[int]) -> ModelConfig:
    """A DeepSpeed config with an ``activation_checkpointing`` section turns on per-layer checkpointing
    unless --checkpoint-activations says otherwise. The section's own options (partitioning activations
    across model-parallel ranks, CPU checkpointing) belong to DeepSpeed's reentrant checkpoint, which
    drops gradients in this model (deepspeed-notes.md); the model uses torch's non-reentrant one."""
    if flag is None and "activation_checkpointing" in config and model_cfg.checkpoint_every == 0:
        return dataclasses.replace(model_cfg, checkpoint_every=1)
    return model_cfg


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# --- the loop -----------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, args: argparse.Namespace):
        # Everything a user can get wrong is checked before any process joins the group.
        self.cfg = train_config_from_args(args)
        self.save_dir = Path(self.cfg.save_dir)
        self.data_info = load_meta(args.data)
        self.ds_config = deepspeed_config(args, self.cfg)
        self.model_cfg = checkpointing_from_config(
            resolve_model_config(args, self.save_dir, self.data_info, self.cfg.resume), self.ds_config,
            getattr(args, "checkpoint_every", None))
        self.given_profile = self._read_profile_file()
        self.rank, self.world, self.device = ds.init_distributed()
        self.seed = args.seed
        seed_everything(self.seed)
        with ds.model_init_context(self.ds_config, self.cfg.zero_init):
            model = TranslationModel(self.model_cfg)
        optimizer = build_optimizer(model, self.cfg, self.ds_config)
        schedule = None if "scheduler" in self.ds_config else inverse_sqrt_schedule(
            self.cfg.warmup_updates, self.cfg.lr, self.cfg.warmup_init_lr)
        self.engine = ds.initialize(model, self.ds_config, optimizer, schedule)
        self.train_data = BatchIterator.build(ParallelDataset.load(args.data, "train"), args.max_tokens,
                                              seed=self.seed, rank=self.rank, world_size=self.world)
        self.valid_data = None
        if self.cfg.valid_split in self.data_info.split_sizes and self.cfg.validate_interval != 0:
            self.valid_data = BatchIterator.build(ParallelDataset.load(args.data, self.cfg.valid_split),
                                                  args.max_tokens, rank=self.rank, world_size=self.world,
                                                  shuffle=False)
        self.step = 0
        self.profile: Optional[OmegaProfile] = None
        self.metrics: Optional[MetricsWriter] = None
        self.args = args

    @property
    def model(self) -> TranslationModel:
        return self.engine.module

    # --- checkpoints ----------------------------------------------------------------------------------
    def save(self) -> None:
        tag = f"global_step{self.step}"
        client_state = {"step": self.step, "data": self.train_data.state_dict(),
                        "model_config": self.model_cfg.to_dict(),
                        "omega": None if self.profile is None else self.profile.to_text()}
        ds.save_checkpoint(self.engine, self.save_dir, tag, client_state)
        # Dropout streams differ per rank; DeepSpeed saves client_state from rank 0 only.
        torch.save(rng_state(), self.save_dir / tag / f"rng_state_rank{self.rank}.pt")
        dist.barrier()
        if self.rank == 0:
            self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        tags = sorted((p for p in self.save_dir.glob("global_step*") if p.is_dir()),
                      key=lambda p: int(p.name[len("global_step"):]))
        for old in tags[: -self.cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    def try_resume(self) -> bool:
        if not self.cfg.resume or not (self.save_dir / "latest").is_file():
            return False
        client_state = ds.load_checkpoint(self.engine, self.save_dir)
        if client_state is None:
            raise UserError(f"{self.save_dir}: 'latest' names a checkpoint that cannot be loaded")
        self.step = int(client_state["step"])
        self.train_data.load_state_dict(client_state["data"])
        if client_state.get("omega"):
            self.profile = OmegaProfile.from_model(self.model)
        rng_file = self.save_dir / f"global_step{self.step}" / f"rng_state_rank{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        log.info("resumed from %s at step %d", self.save_dir / f"global_step{self.step}", self.step)
        return True

    # --- Admin ----------------------------------------------------------------------------------------
    def _read_profile_file(self) -> Optional[OmegaProfile]:
        if not self.cfg.omega_profile:
            return None
        if self.model_cfg.residual != "admin":
            raise UserError("--omega-profile needs --residual admin")
        return OmegaProfile.read(self.cfg.omega_profile).check_fits(
            self.model_cfg.encoder_layers, self.model_cfg.decoder_layers, self.cfg.omega_profile)

    def init_omega(self, first_batch) -> None:
        """The rank-0 hook: before the first optimizer step, every rank gets rank 0's ω."""
        if self.model_cfg.residual != "admin":
            return
        start = time.perf_counter()
        self.profile = ds.omega_hook(self.engine, first_batch.src_tokens, first_batch.tgt_input,
                                     dropout=self.cfg.profile_dropout, profile=self.given_profile)
        if self.rank == 0:
            self.profile.write(self.save_dir / "omega.profile")
            source = self.cfg.omega_profile or "rank 0's first batch"
            log.info("%s (from %s, %.2f s)", self.profile.summary(), source, time.perf_counter() - start)

    # --- validation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        self.engine.eval()
        sums = torch.zeros(3, dtype=torch.float64)  # loss, nll, tokens
        for batch in self.valid_data:
            batch = batch.to(self.device)
            loss, nll = self.engine(batch.src_tokens, batch.tgt_input, target=batch.tgt_output,
                                    label_smoothing=self.cfg.label_smoothing)
            sums += torch.tensor([float(loss), float(nll), batch.ntokens], dtype=torch.float64)
        self.engine.train()
        sums = self._all_reduce(sums)
        tokens = max(sums[2].item(), 1.0)
        return {"step": self.step, "valid_loss": sums[0].item() / tokens, "valid_nll": sums[1].item() / tokens,
                "valid_ppl": float(np.exp(min(sums[1].item() / tokens, 50.0)))}

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            reduced = values.to(self.device, torch.float64 if self.device.type == "cpu" else torch.float32)
            dist.all_reduce(reduced)
            return reduced.cpu().double()
        return values

    # --- training -------------------------------------------------------------------------------------
    def finished(self) -> bool:
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return True
        if self.cfg.max_epochs is not None and self.train_data.epoch > self.cfg.max_epochs:
            return True
        return self.cfg.max_minutes is not None and self._out_of_time()

    def _out_of_time(self) -> bool:
        """Rank 0's clock decides, so that every rank stops after the same update."""
        late = torch.tensor([float(time.perf_counter() - self.started > 60.0 * self.cfg.max_minutes)])
        if self.world > 1:
            late = late.to(self.device)
            dist.broadcast(late, src=0)
        return bool(late.item())

    def run(self) -> None:
        resumed = self.try_resume()
        if self.rank == 0:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.save_dir / RUN_CONFIG, {"model": self.model_cfg.to_dict(),
                                                             "train": self.cfg.to_dict(),
                                                             "data": str(self.args.data), "seed": self.seed,
                                                             "world_size": self.world})
            write_json_atomic(self.save_dir / DS_CONFIG_COPY, self.ds_config)
            self.metrics = MetricsWriter(self.save_dir, self.cfg.max_steps, self.step, self.cfg.tensorboard)
            log.info("model: %s, %.1fM parameters, ZeRO-%d, %s, %d rank(s)", self.model_cfg.residual,
                     sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.model.parameters()) / 1e6,
                     ds.zero_stage(self.ds_config), ds.precision(self.ds_config), self.world)
        dist.barrier()
        needs_omega = not resumed
        self.started = time.perf_counter()
        # loss, nll, tokens since the last log; kept on the device so that the step never waits for the host
        window = torch.zeros(3, dtype=torch.float64, device=self.device)
        window_start = time.perf_counter()
        grad_norm = None
        validate_every = self.cfg.validate_interval or self.cfg.save_interval
        while not self.finished():
            for batch in self.train_data:
                batch = batch.to(self.device)
                if needs_omega:
                    self.init_omega(batch)
                    needs_omega = False
                loss_sum, nll_sum = self.engine(batch.src_tokens, batch.tgt_input, target=batch.tgt_output,
                                                label_smoothing=self.cfg.label_smoothing)
                self.engine.backward(loss_sum / batch.ntokens)
                # Ask before step(): afterwards DeepSpeed answers for the next micro-batch.
                boundary = self.engine.is_gradient_accumulation_boundary()
                if boundary and (self.step + 1) % self.cfg.log_interval == 0:
                    grad_norm = ds.local_grad_norm(self.engine)
                self.engine.step()
                window[0] += loss_sum.detach()
                window[1] += nll_sum.detach()
                window[2] += batch.ntokens
                if not boundary:
                    continue
                self.step += 1
                if self.metrics is not None:
                    self.metrics.advance()
                if self.step % self.cfg.log_interval == 0 or self.step == self.cfg.max_steps:
                    self._log_window(window, time.perf_counter() - window_start, grad_norm)
                    window.zero_()
                    window_start = time.perf_counter()
                if self.valid_data is not None and self.cfg.validate_interval != 0 and self.step % validate_every == 0:
                    self._write(self.validate())
                if self.step % self.cfg.save_interval == 0:
                    self.save()
                if self.finished():
                    break
            else:
                self.train_data.set_epoch(self.train_data.epoch + 1)
        if self.step % self.cfg.save_interval != 0:
            self.save()
        if self.metrics is not None:
            self.metrics.close()

    def _log_window(self, window: torch.Tensor, seconds: float, grad_norm: Optional[float]) -> None:
        totals = self._all_reduce(window.detach().cpu())
        tokens = max(totals[2].item(), 1.0)
        row = {"step": self.step, "loss": totals[0].item() / tokens, "nll": totals[1].item() / tokens,
               **ds.engine_step_info(self.engine, grad_norm), "tokens_per_s": tokens / max(seconds, 1e-9),
               "epoch": self.train_data.epoch}
        self._write(row)

    def _write(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(row)


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True)
    # DeepSpeed's INFO lines would drown ours; its warnings still show.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def main(args: argparse.Namespace) -> int:
    setup_logging(int(os.environ.get("RANK", "0")))
    trainer = Trainer(args)
    try:
        trainer.run()
    finally:
        ds.finish_distributed()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="admin_ds.train", description="Train an Admin Transformer with DeepSpeed.")
    add_arguments(parser)
    return parser


def cli_main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return main(args)
    except UserError as err:
        print(f"admin-ds train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli_main())
