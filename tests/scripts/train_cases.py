"""Run several `admin-ds train` configurations in one multi-rank launch (used by test_train.py).

    torchrun --nproc_per_node 2 tests/scripts/train_cases.py CASES.json OUT_DIR

CASES.json is a list of {"name": ..., "argv": [train flags...]}. Each case runs the real Trainer; then
every rank saves its view of the full weights to OUT_DIR/NAME-rankR.pt. Launch and import costs are paid
once for all cases.
"""

import json
import sys
from pathlib import Path

import torch

from admin_ds import engine as ds
from admin_ds.train import Trainer, build_parser, setup_logging


def main() -> int:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    rank, _, _ = ds.init_distributed()
    setup_logging(rank)
    for case in cases:
        trainer = Trainer(build_parser().parse_args(case["argv"]))
        trainer.run()
        torch.save(ds.gathered_state_dict(trainer.engine), out / f"{case['name']}-rank{rank}.pt")
        trainer.engine.destroy()
    ds.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
