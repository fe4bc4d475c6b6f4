"""The learning-rate schedule (fairseq's inverse_sqrt) and the optimizer choice."""

import math

import pytest
import torch

from admin_ds.training.config import TrainConfig
from admin_ds.training.engine import read_ds_config
from admin_ds.training.schedule import inverse_sqrt_factor, inverse_sqrt_schedule
from admin_ds.training.setup import build_optimizer, deepspeed_config


def test_inverse_sqrt_warmup_then_decay():
    peak, init, warmup = 7e-4, 1e-7, 8000
    lr = lambda step: peak * inverse_sqrt_factor(step, warmup, peak, init)  # noqa: E731
    assert lr(0) == pytest.approx(init)
    assert lr(4000) == pytest.approx(init + 4000 * (peak - init) / warmup)
    assert lr(8000) == pytest.approx(peak)
    assert lr(32000) == pytest.approx(peak / 2)  # sqrt(8000 / 32000)
    assert lr(8000 * 100) == pytest.approx(peak / 10)


def test_schedule_drives_a_torch_optimizer():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=123.0)
    scheduler = inverse_sqrt_schedule(4, 1e-3, 0.0)(optimizer)
    seen = []
    for _ in range(9):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert seen[8] == pytest.approx(1e-3 * math.sqrt(4 / 8))


@pytest.mark.parametrize("name,kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("radam", torch.optim.RAdam)])
def test_optimizer_choice(name, kind):
    cfg = TrainConfig(save_dir="x", max_steps=1, optimizer=name, lr=3e-4, adam_betas=(0.9, 0.98)).validate()
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg, {})
    assert isinstance(optimizer, kind)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["lr"] == 3e-4
    # A config with its own optimizer section wins (FusedAdam on GPUs); --lr still sets its rate.
    assert build_optimizer(torch.nn.Linear(2, 2), cfg, {"optimizer": {"type": "Adam"}}) is None


def test_deepspeed_config_gets_our_settings(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"optimizer": {"type": "Adam", "params": {"lr": 1.0}}, "gradient_accumulation_steps": 4}')
    cfg = TrainConfig(save_dir="x", max_steps=1, lr=2e-4, clip_norm=0.5).validate()
    config = deepspeed_config(read_ds_config(str(path)), cfg)
    assert config["optimizer"]["params"]["lr"] == 2e-4
    assert config["gradient_clipping"] == 0.5 and config["gradient_accumulation_steps"] == 4
    assert config["train_micro_batch_size_per_gpu"] == 1
