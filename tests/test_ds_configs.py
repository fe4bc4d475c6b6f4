"""Every shipped DeepSpeed config parses and passes DeepSpeed's own validation.

DeepSpeed validates some sections (fp16, bf16, zero_optimization) only inside ``initialize``, on the
GPU paths these configs are for; their pydantic models are run here directly so a bad value (such as a
fractional min_loss_scale) is caught on the CPU.
"""

import json
import re

import pytest
from deepspeed.runtime.config import DeepSpeedConfig
from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

from launch_util import REPO

CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))


def test_configs_exist():
    names = {path.stem for path in CONFIGS}
    for stage in ("zero1", "zero2", "zero3", "zero3_offload"):
        for precision in ("fp16", "bf16"):
            assert f"{stage}_{precision}" in names
    assert {"cpu_fp32", "cpu_zero2_fp32", "cpu_zero2_bf16", "cpu_zero3_bf16"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid(path):
    config = json.loads(path.read_text())
    DeepSpeedConfig(dict(config))
    if "fp16" in config:
        DeepSpeedFP16Config(**config["fp16"])
    if "bf16" in config:
        DeepSpeedBF16Config(**config["bf16"])
    DeepSpeedZeroConfig(**config.get("zero_optimization", {}))
    named = re.search(r"zero(\d)", path.stem)
    assert config["zero_optimization"]["stage"] == (int(named.group(1)) if named else 0)
    offloads = {key for key in ("offload_optimizer", "offload_param") if key in config["zero_optimization"]}
    assert offloads == ({"offload_optimizer", "offload_param"} if "offload" in path.stem else set())
    precision = "fp16" if config.get("fp16", {}).get("enabled") else "bf16" if config.get("bf16", {}).get(
        "enabled") else "fp32"
    assert path.stem.endswith(precision)
    # A *_torchoptim config leaves the optimizer to --optimizer (a section would replace it); the others
    # name DeepSpeed's Adam, on CPUs its torch build.
    assert ("optimizer" not in config) == ("torchoptim" in path.stem)
    if path.stem.startswith("cpu_"):
        assert "optimizer" not in config or config["optimizer"]["params"].get("torch_adam"), \
            "CPU configs must not need a compiled Adam"
    else:
        assert config.get("fp16", config.get("bf16", {})).get("enabled"), "GPU configs train in half precision"
