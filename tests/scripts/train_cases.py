"""Run several `admin-ds train` configurations in one multi-rank launch (used by test_train.py).

    torchrun --nproc_per_node 2 tests/scripts/train_cases.py CASES.json OUT_DIR

CASES.json is a list of {"name": ..., "argv": [train flags...]}, optionally with "bad_grads": [RANK, "STEPS"]
(inf gradients on one rank at those updates; see faults.py). Each case runs the real Trainer; then
every rank saves its view of the full weights to OUT_DIR/NAME-rankR.pt (with "save_masters": true, also
their fp32 masters to OUT_DIR/NAME-rankR-masters.pt) and, for Admin models, ω as the weights hold it
(gathered) and the size of this rank's own piece of the first ω to OUT_DIR/NAME-rankR.json.
Launch and import costs are paid once for all cases.
"""

import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from faults import bad_grads

from admin_ds.cli import build_parser
from admin_ds.cli.train import run_configs
from admin_ds.training import engine as training_engine
from admin_ds.training.loop import Trainer
from admin_ds.training.metrics import setup_logging
from admin_ds.training.rendezvous import fill_rendezvous_env


def run_cases(run_case: Callable[[dict, Trainer, int, Path], None]) -> int:
    """``SCRIPT CASES.json OUT_DIR``: join the process group once, then for each case build the real Trainer
    from its ``argv`` and hand it to ``run_case(case, trainer, rank, out_dir)``, which runs it and records."""
    out = Path(sys.argv[2])
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    rank, _, _ = training_engine.init_distributed()
    setup_logging(rank)
    for case in json.loads(Path(sys.argv[1]).read_text()):
        trainer = Trainer(*run_configs(build_parser("train").parse_args(["train", *case["argv"]])))
        run_case(case, trainer, rank, out)
        trainer.engine.destroy()
    training_engine.finish_distributed()
    return 0


def run_and_save(case: dict, trainer: Trainer, rank: int, out: Path) -> None:
    """Train, then save this rank's view of the full weights and, for Admin models, ω (see the docstring)."""
    undo = bad_grads(*map(str, case["bad_grads"])) if "bad_grads" in case else (lambda: None)
    trainer.run()
    undo()
    torch.save(training_engine.gathered_state_dict(trainer.engine), out / f"{case['name']}-rank{rank}.pt")
    if case.get("save_masters"):
        masters = {name: training_engine.full_parameter(trainer.engine, param)
                   for name, param in trainer.engine.module.named_parameters()}
        torch.save(masters, out / f"{case['name']}-rank{rank}-masters.pt")
    if trainer.is_admin:
        profile = training_engine.omega_profile(trainer.engine)
        first = trainer.model.residuals("encoder")[0].omega
        record = {"omega": profile.encoder + profile.decoder,
                  "omega_local_numel": getattr(first, "ds_tensor", first).numel()}
        (out / f"{case['name']}-rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    training_engine.exit_skipping_finalization(run_cases(run_and_save))
