"""A training update reads nothing back from the device outside log steps (host syncs).

On a GPU every such read (``.item()``, ``bool(t)``, ``nonzero``, ...) stops the CPU until the GPU has caught
up. bench/host_reads.py finds them on a CPU by watching the dispatched ops; these tests run it over a real
two-rank ZeRO-2 training and over the model alone.
"""

import json
import sys

import pytest
import torch

from admin_ds.model import build_model

from launch_util import REPO, run_torchrun

sys.path.insert(0, str(REPO / "bench"))
from host_reads import HostReadSpy  # noqa: E402

# DeepSpeed decides on the host whether an update is applied (the overflow flag and the gradient norm's
# finiteness, all-reduced first), which no config of ours can move to the device without giving up the
# skip; torch's Adam keeps its step counter in a host tensor (no device wait). Anything else is a finding.
ALLOWED = ("deepspeed/runtime/zero/stage_1_and_2.py", "has_overflow"), \
          ("deepspeed/runtime/utils.py", "is_invalid_grad_norm"), ("torch/optim/optimizer.py", "_get_value")


def test_the_spy_sees_each_kind_of_host_read():
    t = torch.tensor([1.0, 0.0, 3.0])
    tolist, numpy = torch.Tensor.tolist, torch.Tensor.numpy
    with HostReadSpy() as spy:
        t.sum().item(), bool(t[0]), int(t[1]), float(t[2]), t.tolist(), t.numpy(), t.nonzero()
    assert sum(spy.sites.values()) == 7, spy.sites
    assert all(site.startswith("tests/test_host_reads.py:") for site in spy.sites), spy.sites
    assert (torch.Tensor.tolist, torch.Tensor.numpy) == (tolist, numpy)  # unwrapped again on exit


def test_the_model_asks_the_device_about_padding_only_when_the_batch_does_not_say():
    model = build_model("admin-tiny", src_vocab_size=50, tgt_vocab_size=50).train()
    src, tgt = torch.randint(4, 50, (3, 7)), torch.randint(4, 50, (3, 6))
    src[0, 5:] = 0
    with HostReadSpy() as asked:
        model(src, tgt[:, :-1], target=tgt[:, 1:])
    with HostReadSpy() as told:
        loss, _ = model(src, tgt[:, :-1], target=tgt[:, 1:], src_padded=True)
        loss.backward()
    assert [site.split(" ")[-1] for site in asked.sites] == ["encode"], asked.sites
    assert not told.sites, told.sites


@pytest.mark.slow
def test_two_rank_zero2_bf16_updates_read_only_deepspeeds_skip_decision(tmp_path, synthetic_data):
    proc = run_torchrun([str(REPO / "tests" / "scripts" / "host_reads_check.py"), "--data", str(synthetic_data),
                         "--arch", "admin-tiny", "--save-dir", str(tmp_path / "run"), "--max-steps", "6",
                         "--max-tokens", "600", "--log-interval", "100", "--save-interval", "1000",
                         "--validate-interval", "0", "--max-minutes", "60", "--no-tensorboard",
                         "--deepspeed_config", str(REPO / "ds_configs" / "cpu_zero2_bf16.json")])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["updates_watched"] == 4  # updates 2-5: not the first, not the last (a log step)
    sites = report["sites"]
    assert not [site for site in sites if site.startswith("admin_ds/")], sites
    unexpected = [site for site in sites if not any(path in site and name in site for path, name in ALLOWED)]
    assert not unexpected, f"host reads outside DeepSpeed's skip decision: {unexpected}"
    # Three decisions per update (overflow flag, norm check in step, norm check in the clip) and the
    # optimizer's step counters: bounded, not growing with the model.
    assert sum(count for site, count in sites.items() if site.startswith("deepspeed/runtime/")) <= 4 * 4, sites
