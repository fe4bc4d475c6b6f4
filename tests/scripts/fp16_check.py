"""DeepSpeed's fp16 path on the CPU: dynamic loss scaling, an injected overflow, the skipped step.

DeepSpeed's CPU accelerator refuses fp16; docs/deepspeed.md: claiming support before ``initialize``
makes fp16 run, which is enough to exercise the loss scaler and Admin's hook in half precision.

    python tests/scripts/fp16_check.py OUT.json
"""

import json
import os
import sys

import torch
from deepspeed.accelerator import get_accelerator

from admin_ds.model import build_model
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env


def run(stage: int) -> dict:
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
              "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
              "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 10, "loss_scale_window": 1000,
                       "hysteresis": 1, "min_loss_scale": 1}}
    torch.manual_seed(0)
    model = build_model("admin-tiny", dropout=0.0)
    engine = training_engine.initialize(model, config)
    gen = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, 64, (8, 9), generator=gen), torch.randint(4, 64, (8, 7), generator=gen)
    profile = training_engine.omega_hook(engine, src, tgt, dropout=False)
    omega = engine.module.encoder.layers[1].ffn_residual.omega
    record = {"profile": profile.encoder + profile.decoder,
              "omega_master": float(training_engine.full_parameter(engine, omega).mean()), "steps": []}
    for step in range(6):
        before = training_engine.full_parameter(engine, engine.module.encoder.layers[0].ffn.fc1.weight)
        loss_sum, _ = engine(src, tgt, target=tgt, label_smoothing=0.1)
        loss = loss_sum / tgt.numel()
        if step == 3:
            loss = loss * float("inf")  # an overflow, as a too-large scale would cause
        engine.backward(loss)
        engine.step()
        after = training_engine.full_parameter(engine, engine.module.encoder.layers[0].ffn.fc1.weight)
        record["steps"].append({"loss": float(loss), "scale": training_engine.loss_scale(engine),
                                "skipped": int(engine.skipped_steps), "moved": bool(not torch.equal(before, after)),
                                "dtype": str(engine.module.encoder.layers[0].ffn.fc1.weight.dtype)})
    engine.destroy()
    return record


def main() -> int:
    get_accelerator().is_fp16_supported = lambda: True
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    training_engine.init_distributed()
    result = {f"zero{stage}": run(stage) for stage in (0, 2)}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    training_engine.exit_skipping_finalization(main())
