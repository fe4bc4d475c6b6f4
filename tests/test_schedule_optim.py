"""The learning-rate schedule (fairseq's inverse_sqrt) and the optimizer choice."""

import math

import pytest
import torch

from admin_ds.checkpoints.zero import model_states_file
from admin_ds.cli import main as cli_main
from admin_ds.errors import UserError
from admin_ds.model import TranslationModel, preset_config
from admin_ds.training.config import TrainConfig
from admin_ds.training.engine import read_ds_config
from admin_ds.training.schedule import inverse_sqrt_factor, inverse_sqrt_schedule
from admin_ds.training.setup import build_optimizer, deepspeed_config

from launch_util import REPO


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
    _, optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg, {})
    assert isinstance(optimizer, kind)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["lr"] == 3e-4
    # A config with its own optimizer section wins (FusedAdam on GPUs); --lr still sets its rate.
    assert build_optimizer(torch.nn.Linear(2, 2), cfg, {"optimizer": {"type": "Adam"}})[1] is None


def test_optimizer_defaults_without_flags():
    cfg = TrainConfig(save_dir="x", max_steps=1, lr=3e-4).validate()
    _, optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg, {})
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["weight_decay"] == 0.0


def test_deepspeed_optimizer_section_takes_the_flags_given_and_refuses_optimizer():
    section = {"type": "Adam", "params": {"lr": 1.0, "betas": [0.9, 0.999], "weight_decay": 0.5, "eps": 1e-6}}
    user = {"optimizer": section}
    unset = deepspeed_config(user, TrainConfig(save_dir="x", max_steps=1, lr=2e-4).validate())
    assert unset["optimizer"]["params"] == {"lr": 2e-4, "betas": [0.9, 0.999], "weight_decay": 0.5, "eps": 1e-6}
    given = TrainConfig(save_dir="x", max_steps=1, lr=2e-4, adam_betas=(0.8, 0.95), weight_decay=0.01).validate()
    params = deepspeed_config(user, given)["optimizer"]["params"]
    assert params == {"lr": 2e-4, "betas": [0.8, 0.95], "weight_decay": 0.01, "eps": 1e-6}
    assert section["params"]["lr"] == 1.0, "the user's config must be left as it was"
    with pytest.raises(UserError, match="--optimizer radam would not be used.*Adam"):
        deepspeed_config(user, TrainConfig(save_dir="x", max_steps=1, optimizer="radam").validate())


def test_betas_and_weight_decay_reach_deepspeeds_own_optimizer(tmp_path, synthetic_data):
    """One real update with the bf16 CPU config (DeepSpeed builds its Adam from the config's section): the
    checkpoint's optimizer holds the flags' betas and weight decay, not the config's 0.9,0.98 and 0."""
    save = tmp_path / "run"
    assert cli_main(["train", "--data", str(synthetic_data), "--arch", "admin-tiny", "--save-dir", str(save),
                     "--max-steps", "1", "--max-tokens", "300", "--no-tensorboard", "--validate-interval", "0",
                     "--deepspeed_config", str(REPO / "ds_configs" / "cpu_bf16.json"), "--adam-betas", "0.8,0.95",
                     "--weight-decay", "0.01"]) == 0
    states = torch.load(model_states_file(save / "global_step1"), weights_only=False)
    (group,) = states["optimizer"]["optimizer_state_dict"]["param_groups"]
    assert tuple(group["betas"]) == (0.8, 0.95) and group["weight_decay"] == 0.01


def test_deepspeed_config_gets_our_settings(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"optimizer": {"type": "Adam", "params": {"lr": 1.0}}, "gradient_accumulation_steps": 4}')
    cfg = TrainConfig(save_dir="x", max_steps=1, lr=2e-4, clip_norm=0.5).validate()
    config = deepspeed_config(read_ds_config(str(path)), cfg)
    assert config["optimizer"]["params"]["lr"] == 2e-4
    assert config["gradient_clipping"] == 0.5 and config["gradient_accumulation_steps"] == 4
    assert config["train_micro_batch_size_per_gpu"] == 1


def omegas_of(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if name.endswith(".omega")]


def test_omega_trains_with_everything_else_by_default():
    # The reference's choice: one group, ω under the same learning rate and weight decay as all weights.
    model = TranslationModel(preset_config("admin-tiny"))
    cfg = TrainConfig(save_dir="x", max_steps=1, weight_decay=1e-4).validate()
    _, optimizer = build_optimizer(model, cfg, {})
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert {id(p) for p in omegas_of(model)} <= {id(p) for p in optimizer.param_groups[0]["params"]}


def test_omega_lr_scale_puts_omega_in_its_own_scaled_group():
    model = TranslationModel(preset_config("admin-tiny"))  # 2-2 layers: 4 + 6 shortcuts
    cfg = TrainConfig(save_dir="x", max_steps=1, omega_lr_scale=0.1).validate()
    parameters, optimizer = build_optimizer(model, cfg, {})
    rest, omega = optimizer.param_groups
    assert [id(p) for p in omega["params"]] == [id(p) for p in omegas_of(model)] and len(omega["params"]) == 10
    assert len(rest["params"]) + 10 == len(list(model.parameters()))
    scheduler = inverse_sqrt_schedule(4, 1e-3, 0.0)(optimizer)
    for step in range(8):
        if step > 0:
            assert omega["lr"] == pytest.approx(0.1 * rest["lr"]) and rest["lr"] > 0
        optimizer.step()
        scheduler.step()
    assert rest["lr"] == pytest.approx(1e-3 * math.sqrt(4 / 8))


def test_omega_lr_scale_zero_freezes_omega_only():
    model = TranslationModel(preset_config("admin-tiny"))
    cfg = TrainConfig(save_dir="x", max_steps=1, omega_lr_scale=0.0, optimizer="adamw", weight_decay=0.1).validate()
    _, optimizer = build_optimizer(model, cfg, {})
    scheduler = inverse_sqrt_schedule(1, 1e-2, 1e-2)(optimizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == name.endswith(".omega"), name


def test_omega_lr_scale_refusals():
    with pytest.raises(UserError, match="--omega-lr-scale"):
        TrainConfig(save_dir="x", max_steps=1, omega_lr_scale=-1.0).validate()
    cfg = TrainConfig(save_dir="x", max_steps=1, omega_lr_scale=0.5).validate()
    with pytest.raises(UserError, match="has none"):
        build_optimizer(TranslationModel(preset_config("admin-tiny", residual="pre-ln")), cfg, {})
    with pytest.raises(UserError, match="scheduler section"):
        build_optimizer(TranslationModel(preset_config("admin-tiny")), cfg, {"scheduler": {"type": "WarmupLR"}})


def test_a_run_resumes_only_with_the_omega_lr_scale_it_was_saved_with(tmp_path):
    (tmp_path / "latest").write_text("global_step3")
    (tmp_path / "train_config.json").write_text('{"model": {}, "train": {"omega_lr_scale": 0.0}}')
    model = TranslationModel(preset_config("admin-tiny"))
    with pytest.raises(UserError, match="trained with --omega-lr-scale 0.0, not 1.0"):
        build_optimizer(model, TrainConfig(save_dir=str(tmp_path), max_steps=1).validate(), {})
    parameters, _ = build_optimizer(model, TrainConfig(save_dir=str(tmp_path), max_steps=1,
                                                       omega_lr_scale=0.0).validate(), {})
    assert len(parameters) == 2
    # A run saved before the flag existed trained ω with everything else: scale 1; --no-resume starts afresh.
    (tmp_path / "train_config.json").write_text('{"model": {}, "train": {}}')
    assert len(build_optimizer(model, TrainConfig(save_dir=str(tmp_path), max_steps=1).validate(), {})[0]) > 2
    cfg = TrainConfig(save_dir=str(tmp_path), max_steps=1, omega_lr_scale=0.5, resume=False).validate()
    assert len(build_optimizer(model, cfg, {})[0]) == 2
