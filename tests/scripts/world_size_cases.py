"""Train, or only resume, `admin-ds train` runs and record what the engine holds (used by
tests/test_train_world_size.py).

    torchrun --nproc_per_node N tests/scripts/world_size_cases.py CASES.json OUT_DIR

CASES.json is a list of {"name", "argv"}. A case runs the real Trainer; every rank writes OUT_DIR/NAME-rankR.pt:
what the engine held right after the resume ("resumed", None without one) and at the end ("final"): the fp32
master weights and Adam's exp_avg / exp_avg_sq, whole (gathered over ranks), the learning rate, the step;
and the pair indices of every batch this rank trained on ("seen").
"""

from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
from train_cases import run_cases

from admin_ds.training.loop import Trainer


def engine_state(trainer: Trainer) -> dict:
    """Every rank must call this: under ZeRO the full tensors are gathered from the partitions."""
    state = {"fp32": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for name, param in trainer.engine.module.named_parameters():
        state["fp32"][name] = safe_get_full_fp32_param(param).detach().cpu().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            value = safe_get_full_optimizer_state(param, key)
            state[key][name] = None if value is None else value.detach().cpu().clone()
    state["lr"] = trainer.engine.get_lr()[0]
    state["step"] = trainer.step
    return state


def record_case(case: dict, trainer: Trainer, rank: int, out: Path) -> None:
    """Train, recording every batch's pair ids and the engine's state right after a resume and at the end."""
    seen: list[int] = []
    train_step, try_resume = trainer._train_step, trainer.try_resume
    record = {"resumed": None, "seen": seen}

    def recording(batch, window):
        seen.extend(batch.ids.tolist())
        return train_step(batch, window)

    def resume_and_record():
        resumed = try_resume()
        if resumed:
            record["resumed"] = engine_state(trainer)
        return resumed

    trainer._train_step, trainer.try_resume = recording, resume_and_record
    trainer.run()
    record.update(final=engine_state(trainer), epoch=trainer.train_data.epoch)
    torch.save(record, out / f"{case['name']}-rank{rank}.pt")


if __name__ == "__main__":
    from admin_ds.training.engine import exit_skipping_finalization

    exit_skipping_finalization(run_cases(record_case))
