"""bench/profile_step.py: a real DeepSpeed step profiled and its time charged to kinds."""

import json
import subprocess
import sys

from launch_util import REPO, launcher_env


def test_profile_step_charges_the_whole_step_to_kinds(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.profile_step", "--arch", "admin-tiny",
                           "--d-model", "0", "--ffn-dim", "0", "--heads", "0", "--batch", "4x8", "--vocab", "200",
                           "--warmup", "1", "--steps", "2", "--out", str(tmp_path)],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "profile_step.json").read_text())
    kinds = result["ms_by_kind"]
    assert result["step_ms"] > 0 and all(ms >= 0 for ms in kinds.values())
    # Own times partition the step: every op and range inside it is charged exactly once.
    assert abs(sum(kinds.values()) - result["step_ms"]) <= 0.02 * result["step_ms"], (kinds, result["step_ms"])
    # ZeRO-2 (the default config): DeepSpeed's gradient hooks and the optimizer are told apart from the model.
    assert kinds["matmul"] > 0 and kinds["DeepSpeed"] > 0 and kinds["optimizer"] > 0, kinds
    # DeepSpeed's skip decision and torch Adam's step counter, none of ours (tests/test_host_reads.py).
    assert 1 <= result["host_reads_per_step"] <= 6, result["host_reads_per_step"]
    # A decoder layer has a third sublayer (cross-attention): more kernels than an encoder layer.
    assert 0 < result["kernels_per_encoder_layer"] < result["kernels_per_decoder_layer"], result
    assert "matmul" in proc.stdout and "kernels per layer" in proc.stdout


def test_the_matmul_yardstick_times_the_products_the_flop_model_counts():
    """bench/matmul_rate.py's product list and admin_ds/model/flops.py's count describe the same step: equal
    but for the causal self-attention, which the FLOP model counts at half and the yardstick runs in full."""
    from admin_ds.model import preset_config
    from admin_ds.model.flops import training_flops
    from bench.matmul_rate import step_products

    for shape in (dict(encoder_layers=18, decoder_layers=6, d_model=256, nhead=4, ffn_dim=1024),
                  dict(encoder_layers=3, decoder_layers=5, d_model=64, nhead=8, ffn_dim=96)):
        cfg = preset_config("admin-small", src_vocab_size=800, tgt_vocab_size=800, **shape)
        batch, src_len, tgt_len = 8, 13, 11
        products = sum(count * 2 * b * m * k * n for (b, m, k, n), count in step_products(cfg, batch, src_len,
                                                                                          tgt_len).items())
        causal_half = 3 * cfg.decoder_layers * batch * tgt_len * 2 * tgt_len * cfg.d_model
        assert products - causal_half == training_flops(cfg, batch, src_len, tgt_len)
