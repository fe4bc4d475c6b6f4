"""The training loop of ``admin-ds train``.

Order of events: join the process group; read the data; build the model (partitioned under --zero-init);
``deepspeed.initialize``; resume from ``latest`` if there is one (ω comes back with the weights), else for
an Admin model run the rank-0 ω hook on the first batch (or take ω from --omega-profile or a closed-form
--omega-init); then train, logging on rank 0, validating and saving every N updates.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from admin_ds.checkpoints.pickles import check_weights_only
from admin_ds.checkpoints.rundir import (
    DS_CONFIG,
    OMEGA_PROFILE,
    UNIVERSAL,
    latest_tag,
    rng_state_file,
    step_tag,
    write_run_config,
)
from admin_ds.checkpoints.runlock import hold_run_directory
from admin_ds.data import Batch, BatchIterator, ParallelDataset, load_meta
from admin_ds.errors import UserError, first_line
from admin_ds.io import write_json_atomic
from admin_ds.model import OmegaProfile, TranslationModel
from admin_ds.model.compiled import compile_layers
from admin_ds.training.best import BestTracker, write_best_export
from admin_ds.training.config import DataConfig, FailureConfig, ModelChoice, TrainConfig
from admin_ds.training.engine import (
    all_reduce_sum,
    barrier,
    broadcast_from_rank0,
    check_ds_config,
    engine_step_info,
    finish_distributed,
    init_distributed,
    initialize,
    is_collective_failure,
    model_init_context,
    omega_hook,
    omega_profile,
    parameter_count,
    precision,
    read_ds_config,
    train_step,
    zero_stage,
)
from admin_ds.training.guard import UpdateGuard, cut_learning_rate
from admin_ds.training.metrics import MetricsWriter
from admin_ds.training.resume import load_any_world_size
from admin_ds.training.saving import save_run_checkpoint
from admin_ds.training.schedule import inverse_sqrt_schedule
from admin_ds.training.setup import build_optimizer, checkpointing_from_config, deepspeed_config, resolve_model_config
from admin_ds.training.speed import Speedometer
from admin_ds.training.state import restore_rng_file, seed_everything
from admin_ds.training.stopping import RunStopped, StopRequest
from admin_ds.training.validation_bleu import BleuValidation
from admin_ds.training.window import TokenSums

log = logging.getLogger("admin_ds")

def epoch_batches(data: BatchIterator, finished: Callable[[], bool]) -> Iterator[Batch]:
    """Batches epoch after epoch until ``finished()``. The sampler moves to the next epoch by itself at the
    end of each pass (and reshuffles from (seed, epoch)), so nothing here advances the epoch: advancing it
    here too once skipped every other epoch."""
    while not finished():
        yield from data


class Trainer:
    """One training run; ``run()`` trains until the configured end and leaves a checkpoint."""

    def __init__(self, train: TrainConfig, data: DataConfig, model: ModelChoice,
                 deepspeed_config_path: Optional[str] = None, failure: Optional[FailureConfig] = None):
        # Everything a user can get wrong is checked before any process joins the group.
        self.cfg = train.validate()
        self.data_cfg = data.validate()
        self.failure = (failure or FailureConfig()).validate()
        self.save_dir = Path(self.cfg.save_dir)
        self.data_info = load_meta(data.data)
        self.ds_config = deepspeed_config(read_ds_config(deepspeed_config_path), self.cfg)
        self.bleu = BleuValidation.for_run(self.cfg, self.data_info)  # --eval-bleu; checks the data's raw text
        self.rank, self.world, self.device = init_distributed(self.failure.dist_timeout_minutes)
        check_ds_config(self.ds_config)  # needs the world size: DeepSpeed checks the batch sizes against it
        self.model_cfg = checkpointing_from_config(
            resolve_model_config(model, self.save_dir, self.data_info, self.cfg.resume), self.ds_config,
            model.overrides.get("checkpoint_every"))
        self.given_profile = self._given_profile()
        sum_over_ranks = partial(all_reduce_sum, device=self.device)  # the run lock's and the stop's collective
        self.lock = hold_run_directory(self.save_dir, self.rank, self.failure, sum_over_ranks)
        seed_everything(data.seed)
        self.engine = self._build_engine()
        self.train_data = BatchIterator.build(ParallelDataset.load(data.data, "train"), data.max_tokens,
                                              seed=data.seed, rank=self.rank, world_size=self.world)
        self.valid_data = self._valid_data()
        self.speed = Speedometer(self.model_cfg, self.cfg.peak_tflops, self.device, self.world)  # FLOP/s, MFU
        self.step = 0
        self.guard = UpdateGuard(self.failure, self.ds_config)
        self.rollbacks, self.lr_scale = 0, 1.0  # divergence rollbacks so far, and their learning-rate cut
        self.good_tag: Optional[str] = None  # this run's newest checkpoint: where a rollback goes
        self.grad_norm: Optional[float] = None
        self.metrics: Optional[MetricsWriter] = None
        self.started = time.perf_counter()
        self.stop = StopRequest.from_config(self.failure, sum_over_ranks, self.world)
        self.best = BestTracker(self.cfg, partial(write_best_export, self.engine, self.save_dir))  # best/, patience

    # --- set-up ---------------------------------------------------------------------------------------
    def _build_engine(self):
        with model_init_context(self.ds_config, self.cfg.zero_init):
            model = TranslationModel(self.model_cfg)
        parameters, optimizer = build_optimizer(model, self.cfg, self.ds_config)
        schedule = None if "scheduler" in self.ds_config else inverse_sqrt_schedule(
            self.cfg.warmup_updates, self.cfg.lr, self.cfg.warmup_init_lr)
        return initialize(model, self.ds_config, optimizer, schedule, parameters)

    def _valid_data(self) -> Optional[BatchIterator]:
        if self.cfg.valid_split not in self.data_info.split_sizes or self.cfg.validate_interval == 0:
            return None
        return BatchIterator.build(ParallelDataset.load(self.data_cfg.data, self.cfg.valid_split),
                                   self.data_cfg.max_tokens, rank=self.rank, world_size=self.world, shuffle=False)

    def _given_profile(self) -> Optional[OmegaProfile]:
        """ω known before training starts: a --omega-profile file or a closed-form --omega-init (the same on
        every rank, so nothing is profiled or broadcast). None: the hook profiles."""
        if self.cfg.omega_given_by() is None:
            return None
        if self.model_cfg.residual != "admin":
            raise UserError(f"{self.cfg.omega_given_by()} needs --residual admin")
        layers = self.model_cfg.encoder_layers, self.model_cfg.decoder_layers
        if self.cfg.omega_profile:
            return OmegaProfile.read(self.cfg.omega_profile).check_fits(*layers, self.cfg.omega_profile)
        return OmegaProfile.closed_form(self.cfg.omega_init, *layers)

    @property
    def model(self) -> TranslationModel:
        return self.engine.module

    @property
    def is_admin(self) -> bool:
        return self.model_cfg.residual == "admin"

    # --- checkpoints ----------------------------------------------------------------------------------
    def save(self) -> None:
        """Every rank's share of checkpoint ``global_stepN`` (training/saving.py: checked, then published)."""
        if self.rank == 0:  # a universal conversion is for resuming an older checkpoint; it could go stale
            shutil.rmtree(self.save_dir / UNIVERSAL, ignore_errors=True)
        client_state = {"step": self.step, "data": self.train_data.state_dict(),
                        "model_config": self.model_cfg.to_dict(),
                        "omega": omega_profile(self.engine).to_text() if self.is_admin else None,
                        "rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "best": self.best.state_dict()}
        save_run_checkpoint(self.engine, self.save_dir, step_tag(self.step), client_state, self.rank,
                            self.cfg.keep_last, self.device)
        self.good_tag = step_tag(self.step)

    def try_resume(self) -> bool:
        """Continue from the checkpoint ``latest`` names: weights (ω among them), optimizer, schedule, the
        data position and every rank's RNG streams. Returns False when there is none (or --no-resume)."""
        tag = latest_tag(self.save_dir) if self.cfg.resume else None
        if tag is None:
            return False
        self._load(tag)
        return True

    def _load(self, tag: str) -> None:
        """Weights, optimizer, schedule, data position and RNG streams of checkpoint ``tag``."""
        check_weights_only(self.save_dir / tag)  # every rank, every file: they all refuse together
        client_state = load_any_world_size(self.engine, self.save_dir, tag, self.rank, self.world, self.device)
        if client_state is None:
            raise UserError(f"{self.save_dir}: 'latest' names a checkpoint that cannot be loaded")
        self.step = int(client_state["step"])
        self.rollbacks, self.lr_scale = int(client_state.get("rollbacks", 0)), float(client_state.get("lr_scale", 1))
        self.best.load_state_dict(client_state.get("best"))
        self.train_data.load_state_dict(client_state["data"])
        rng_file = rng_state_file(self.save_dir, step_tag(self.step), self.rank)
        if rng_file.is_file():
            restore_rng_file(rng_file)
        else:
            log.warning("%s is missing: this rank's random streams start afresh (the resume is not exact)",
                        rng_file)
        log.info("resumed from %s at step %d", rng_file.parent, self.step)
        self.good_tag = tag

    # --- Admin ----------------------------------------------------------------------------------------
    def init_omega(self, first_batch: Batch) -> None:
        """The rank-0 hook: before the first optimizer step, every rank gets the same ω (rank 0's profile,
        a --omega-profile file or a closed-form --omega-init)."""
        if not self.is_admin:
            return
        start = time.perf_counter()
        profile = omega_hook(self.engine, first_batch.src_tokens, first_batch.tgt_input,
                             dropout=self.cfg.profile_dropout, profile=self.given_profile)
        if self.rank == 0:
            profile.write(self.save_dir / OMEGA_PROFILE)
            source = self.cfg.omega_profile or self.cfg.omega_given_by() or "rank 0's first batch"
            log.info("%s (from %s, %.2f s)", profile.summary(), source, time.perf_counter() - start)

    def compile_layers(self) -> None:
        """--compile-layers: torch.compile each layer in place (model/compiled.py; the first steps compile)."""
        if self.cfg.compile_layers:
            log.info("compiling %d layers with torch.compile", compile_layers(self.model))

    # --- validation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        self.engine.eval()
        sums = TokenSums(self.device)
        for batch in self.valid_data:
            batch = batch.to(self.device)
            loss, nll = self.engine(batch.src_tokens, batch.tgt_input, target=batch.tgt_output,
                                    label_smoothing=self.cfg.label_smoothing, src_padded=batch.src_padded)
            sums.add(loss, nll, batch.ntokens)
        bleu = self.bleu.scores(self.engine, self.device) if self.bleu is not None else {}  # in eval mode too
        self.engine.train()
        totals = sums.totals()
        return self.best.judge({"step": self.step, "valid_loss": totals["loss"], "valid_nll": totals["nll"],
                                "valid_ppl": float(np.exp(min(totals["nll"], 50.0))), **bleu})

    # --- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        resumed = self.try_resume()
        self._start_records()
        prepared = False  # the ω hook (a fresh run; a resumed one has ω in its weights), then compiling
        window = TokenSums(self.device)
        self.started = self._window_start = time.perf_counter()
        first_step = self.step
        while not self.finished():
            for batch in epoch_batches(self.train_data, self.finished):
                batch = batch.to(self.device)
                if not prepared:
                    if not resumed:
                        self.init_omega(batch)
                    self.compile_layers()  # after the ω hook: its profiling forward must not be traced
                    prepared = True
                if not self._train_step(batch, window):
                    continue  # gradient accumulation: no update yet
                if self.guard.diverged:
                    self._roll_back(window)
                    break  # the data position moved back: start its iteration again
                self._after_update(window)
                if self.finished():
                    break
        self._finish(window, updated=self.step > first_step)

    def _train_step(self, batch: Batch, window: TokenSums) -> bool:
        """Forward, backward and DeepSpeed's step for one micro-batch; True at an optimizer update."""
        result = train_step(self.engine, batch, self.cfg.label_smoothing, self.guard, self.step + 1)
        if result.update:
            self.grad_norm = result.grad_norm
        window.add(result.loss_sum, result.nll_sum, batch.ntokens, self.speed.flops(batch))
        return result.update

    def _roll_back(self, window: TokenSums) -> None:
        """Back to this run's last checkpoint (saved or resumed from; never an older run's that --no-resume
        ignored) with the learning rate cut, or stop (a UserError) when the rollbacks are used up; every rank
        decides the same (guard.py) and so reloads together."""
        diverged_at, tag = self.step + 1, self.good_tag
        reason = (f"training diverged at update {diverged_at}: {self.guard.in_a_row} update(s) in a row skipped "
                  f"for non-finite loss or gradients")
        if tag is None or self.rollbacks >= self.failure.max_rollbacks:
            kept = f"the last good checkpoint, {self.save_dir / tag}, is intact" if tag else "no checkpoint yet"
            raise UserError(f"{reason}; {kept} (rollbacks used: {self.rollbacks} of {self.failure.max_rollbacks}). "
                            "Lower --lr or lengthen --warmup-updates, then run again")
        rollbacks, lr_scale = self.rollbacks + 1, self.lr_scale * self.failure.rollback_lr_factor
        self._load(tag)
        self.rollbacks, self.lr_scale = rollbacks, lr_scale
        if not cut_learning_rate(self.engine, self.failure.rollback_lr_factor):
            log.warning("the learning rate is not cut: the DeepSpeed config's scheduler sets it")
        self.guard.reset()
        window.sums.zero_()
        log.warning("%s; rolled back to %s (rollback %d of %d), learning rate x%g", reason, tag, rollbacks,
                    self.failure.max_rollbacks, lr_scale)
        self._write({"step": self.step, "rollback": rollbacks, "diverged_at": diverged_at, "lr_scale": lr_scale})

    def _after_update(self, window: TokenSums) -> None:
        """Count the update; log, validate and save when they are due."""
        self.step += 1
        if self.metrics is not None:
            self.metrics.advance()
        if self.step % self.cfg.log_interval == 0 or self.step == self.cfg.max_steps:
            self._log(window, time.perf_counter() - self._window_start)
            self._window_start = time.perf_counter()
        validate_every = self.cfg.validate_interval or self.cfg.save_interval
        if self.valid_data is not None and self.step % validate_every == 0:
            self._write(self.validate())
        if self.step % self.cfg.save_interval == 0:
            self.save()
        self.stop.due(self.step, at_end=self.step == self.cfg.max_steps)

    def finished(self) -> bool:
        if self.stop.stopped_by or self.best.exhausted:
            return True
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return True
        if self.cfg.max_epochs is not None and self.train_data.epoch > self.cfg.max_epochs:
            return True
        return self.cfg.max_minutes is not None and self.step % self.cfg.log_interval == 0 and self._out_of_time()

    def _out_of_time(self) -> bool:
        """Rank 0's clock decides, so that every rank stops after the same update. Asked at log steps only:
        the answer is a collective and a read on the host, which every update would wait for."""
        late = torch.tensor([float(time.perf_counter() - self.started > 60.0 * self.cfg.max_minutes)])
        return bool(broadcast_from_rank0(late.to(self.device)).item())

    def _finish(self, window: TokenSums, updated: bool) -> None:
        """The last update gets its training row, validation and checkpoint, whatever ended the run."""
        if updated and self.step % self.cfg.log_interval != 0 and self.step != self.cfg.max_steps:
            self._log(window, time.perf_counter() - self._window_start)
        validate_every = self.cfg.validate_interval or self.cfg.save_interval
        if updated and self.valid_data is not None and self.step % validate_every != 0 and not self.stop.stopped_by:
            self._write(self.validate())  # not when stopping: a time limit is near
        if self.step % self.cfg.save_interval != 0:
            self.save()
        if self.stop.stopped_by:
            self._write(self.stop.announce(self.step, self.save_dir / step_tag(self.step)))
        if self.metrics is not None:
            self.metrics.close()

    # --- records --------------------------------------------------------------------------------------
    def _start_records(self) -> None:
        """Rank 0 writes the run's configs and opens metrics.jsonl; every rank waits for it."""
        if self.rank == 0:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(self.save_dir, self.model_cfg.to_dict(), self.cfg.to_dict(), self.data_cfg.data,
                             self.data_cfg.seed, self.world)
            write_json_atomic(self.save_dir / DS_CONFIG, self.ds_config)
            self.metrics = MetricsWriter(self.save_dir, self.cfg.max_steps, self.step, self.cfg.tensorboard)
            log.info("model: %s, %.1fM parameters, ZeRO-%d, %s, %d rank(s)", self.model_cfg.residual,
                     parameter_count(self.model) / 1e6,
                     zero_stage(self.ds_config), precision(self.ds_config), self.world)
        barrier()

    def _log(self, window: TokenSums, seconds: float) -> None:
        totals = window.totals()
        row = {"step": self.step, "loss": totals["loss"], "nll": totals["nll"],
               **engine_step_info(self.engine, self.grad_norm), "skipped_updates": self.guard.skipped,
               "tokens_per_s": totals["tokens"] / max(seconds, 1e-9), **self.speed.fields(totals["flops"], seconds),
               "epoch": self.train_data.epoch}
        self._write(row)

    def _write(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.write({**row, "elapsed_s": round(time.perf_counter() - self.started, 2)})


def train(train: TrainConfig, data: DataConfig, model: ModelChoice,
          deepspeed_config_path: Optional[str] = None, failure: Optional[FailureConfig] = None) -> Path:
    """Run one training (on every rank of the launch) and return its run directory."""
    trainer = Trainer(train, data, model, deepspeed_config_path, failure)
    try:
        with trainer.stop.handlers_installed():  # from here on, a stop signal saves first
            trainer.run()
    except Exception as err:
        if not is_collective_failure(err):
            finish_distributed()
            raise
        finish_distributed(peers_alive=False)
        raise UserError(f"lost contact with another rank (this is rank {trainer.rank} of {trainer.world}): "
                        f"{first_line(err)}. A rank died or hangs (its own log says why); run the same command "
                        f"to resume from {trainer.save_dir / (latest_tag(trainer.save_dir) or '(no checkpoint yet)')}"
                        ) from None
    finish_distributed()
    if trainer.stop.stopped_by:
        raise RunStopped(f"stopped on {trainer.stop.stopped_by} after update {trainer.step}")
    return trainer.save_dir

