"""Train, or only resume, `admin-ds train` runs and record what the engine holds (used by
tests/test_train_world_size.py).

    torchrun --nproc_per_node N tests/scripts/world_size_cases.py CASES.json OUT_DIR

CASES.json is a list of {"name", "argv"}. A case runs the real Trainer; every rank writes OUT_DIR/NAME-rankR.pt:
what the engine held right after the resume ("resumed", None without one) and at the end ("final"): the fp32
master weights and Adam's exp_avg / exp_avg_sq, whole (gathered over ranks), the learning rate, the step;
and the pair indices of every batch this rank trained on ("seen").
"""

import json
import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from admin_ds.cli import build_parser
from admin_ds.cli.train import run_configs
from admin_ds.training import engine as training_engine
from admin_ds.training.loop import Trainer, setup_logging


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


def main() -> int:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    rank, _, _ = training_engine.init_distributed()
    setup_logging(rank)
    for case in cases:
        trainer = Trainer(*run_configs(build_parser("train").parse_args(["train", *case["argv"]])))
        seen: list[int] = []
        train_step = trainer._train_step

        def recording(batch, window, train_step=train_step, seen=seen):
            seen.extend(batch.ids.tolist())
            return train_step(batch, window)

        trainer._train_step = recording
        record = {"resumed": None, "seen": seen}
        try_resume = trainer.try_resume

        def resume_and_record(try_resume=try_resume, record=record, trainer=trainer):
            resumed = try_resume()
            if resumed:
                record["resumed"] = engine_state(trainer)
            return resumed

        trainer.try_resume = resume_and_record
        trainer.run()
        record.update(final=engine_state(trainer), epoch=trainer.train_data.epoch)
        torch.save(record, out / f"{case['name']}-rank{rank}.pt")
        trainer.engine.destroy()
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
