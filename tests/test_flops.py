"""Model FLOPs and training speed: admin_ds/model/flops.py against a count by hand, the training rows'
tflops_per_rank and mfu on a real CPU run, --peak-tflops, the GPU peak table, and one count shared by
`admin-ds plan` and the benchmarks."""

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from admin_ds.cli import main as cli_main
from admin_ds.data import Batch, BatchIterator, ParallelDataset, collate, load_meta
from admin_ds.errors import UserError
from admin_ds.model import preset_config
from admin_ds.model.flops import batch_training_flops, training_flops
from admin_ds.training.config import ModelChoice, TrainConfig
from admin_ds.training.speed import PEAK_TFLOPS, Speedometer, table_peak_tflops
from admin_ds.training.window import TokenSums
from admin_ds.vocab import SPECIAL_IDS

from launch_util import REPO


def products_of_one_pair(d, f, vocab, s, t):
    """Every matrix product of one layer of each stack for one sentence pair of s source and t target
    positions, as (rows, inner, columns, how many): written out from the model, not from flops.py."""
    encoder = [(s, d, d, 4),                       # q, k, v and output projections
               (s, d, s, 1), (s, s, d, 1),         # scores q k^T, then probabilities x v
               (s, d, f, 1), (s, f, d, 1)]         # FFN up, down
    decoder = [(t, d, d, 4),                       # self-attention q, k, v, output
               (t, d, t, 0.5), (t, t, d, 0.5),     # causal self-attention: half of each square product
               (t, d, d, 2), (s, d, d, 2),         # cross-attention q and output; keys and values of the memory
               (t, d, s, 1), (t, s, d, 1),         # cross scores, weighted sum
               (t, d, f, 1), (t, f, d, 1)]         # FFN
    output = [(t, d, vocab, 1)]
    return encoder, decoder, output


def hand_count(cfg, s, t):
    encoder, decoder, output = products_of_one_pair(cfg.d_model, cfg.ffn_dim, cfg.tgt_vocab_size, s, t)
    flops = lambda products: sum(2 * m * k * n * count for m, k, n, count in products)  # noqa: E731
    forward = cfg.encoder_layers * flops(encoder) + cfg.decoder_layers * flops(decoder) + flops(output)
    return 3 * forward  # backward: two products (input and weight gradients) per forward product


def test_flop_model_against_a_count_by_hand():
    cfg = preset_config("admin-tiny", encoder_layers=1, decoder_layers=1, d_model=4, nhead=2, ffn_dim=8,
                        src_vocab_size=10, tgt_vocab_size=10)
    # d=4, f=8, V=10, s=3, t=2: encoder 384 + 144 + 384 = 912, decoder 256 + 32 + 128 + 192 + 96 + 256 = 960,
    # output 160; forward 2032, update 3 x 2032.
    assert hand_count(cfg, 3, 2) == 6096
    assert batch_training_flops(cfg, [3], [2]) == 6096
    assert training_flops(cfg, 1, 3, 2) == 6096
    cfg = preset_config("admin-tiny", encoder_layers=3, decoder_layers=2, src_vocab_size=70, tgt_vocab_size=70)
    pairs = [(7, 5), (2, 9), (11, 11)]
    assert batch_training_flops(cfg, *zip(*pairs)) == sum(hand_count(cfg, s, t) for s, t in pairs)
    assert training_flops(cfg, 3, 11, 11) == 3 * hand_count(cfg, 11, 11)  # the padded shape counts full rows


def test_batches_carry_their_lengths_and_the_count_uses_them():
    pairs = [(np.array([4, 5, 6]), np.array([7])), (np.array([8]), np.array([9, 10, 11, 12]))]
    batch = collate(pairs, [0, 1])
    pad = SPECIAL_IDS.pad
    assert batch.src_lengths.tolist() == batch.src_tokens.ne(pad).sum(1).tolist() == [4, 2]  # ids + EOS
    assert batch.tgt_lengths.tolist() == batch.tgt_input.ne(pad).sum(1).tolist() == [2, 5]  # BOS + ids
    cfg = preset_config("admin-tiny", src_vocab_size=20, tgt_vocab_size=20)
    speed = Speedometer(cfg, None, torch.device("cpu"), world=1)
    assert speed.flops(batch) == hand_count(cfg, 4, 2) + hand_count(cfg, 2, 5)
    by_hand = Batch(batch.src_tokens, batch.tgt_input, batch.tgt_output, batch.ntokens, batch.ids)
    assert speed.flops(by_hand) == training_flops(cfg, 2, 4, 5)  # no lengths: the padded [2, 4] x [2, 5]


def test_speed_fields_and_the_peak_table():
    cfg = preset_config("admin-tiny")
    assert Speedometer(cfg, None, torch.device("cpu"), world=4).fields(8e12, 2.0) == {"tflops_per_rank": 1.0}
    assert Speedometer(cfg, 4.0, torch.device("cpu"), world=4).fields(8e12, 2.0) == {"tflops_per_rank": 1.0,
                                                                                      "mfu": 0.25}
    # The longest name part wins: variants before their family, "A100" before "A10".
    for name, key in [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                      ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200"), ("NVIDIA GH200 480GB", "H200"),
                      ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A10", "A10"), ("NVIDIA L40S", "L40S"),
                      ("NVIDIA L4", "L4"), ("Tesla V100-PCIE-32GB", "V100-PCIE"), ("Tesla V100S-PCIE-32GB", "V100S"),
                      ("Tesla V100-SXM2-16GB", "V100"), ("Tesla T4", "T4")]:
        assert table_peak_tflops(name) == PEAK_TFLOPS[key], name
    assert table_peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    for unknown in ("NVIDIA A10G", "NVIDIA GeForce RTX 3090", "NVIDIA B200", "cpu"):
        assert table_peak_tflops(unknown) is None, unknown


def test_token_sums_add_the_host_flops_to_the_same_reduction():
    sums = TokenSums(torch.device("cpu"))
    sums.add(torch.tensor(6.0), torch.tensor(3.0), 4, 1.5e9)
    sums.add(torch.tensor(2.0), torch.tensor(1.0), 4, 0.5e9)
    assert sums.totals() == {"loss": 1.0, "nll": 0.5, "tokens": 8.0, "flops": 2e9}
    sums.add(torch.tensor(1.0), torch.tensor(1.0), 2)
    assert sums.totals()["flops"] == 0.0  # started again


def train_rows(data, save_dir, *extra):
    assert cli_main(["train", "--data", str(data), "--save-dir", str(save_dir), "--arch", "admin-tiny",
                     "--max-steps", "2", "--max-tokens", "300", "--log-interval", "1", "--validate-interval", "0",
                     "--warmup-updates", "2", "--no-tensorboard", *extra]) == 0
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_rows_say_the_model_flops_per_second(tmp_path, synthetic_data):
    cfg = ModelChoice("admin-tiny").resolve(load_meta(synthetic_data))
    batches = iter(BatchIterator.build(ParallelDataset.load(synthetic_data, "train"), 300, seed=1))
    pad = cfg.pad_id
    # On a CPU there is no peak, so no MFU; on a GPU the table's figure, if it has the GPU.
    peak = table_peak_tflops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    rows = train_rows(synthetic_data, tmp_path / "default")
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:  # one micro-batch per row: the run's batches in order
        batch = next(batches)
        flops = batch_training_flops(cfg, batch.src_tokens.ne(pad).sum(1), batch.tgt_input.ne(pad).sum(1))
        assert row["tflops_per_rank"] > 0
        assert row.get("mfu") == (pytest.approx(row["tflops_per_rank"] / peak, rel=1e-12) if peak else None)
        # Both rates divide by the same window time: their ratio is the batch's FLOPs per target token.
        assert row["tflops_per_rank"] / row["tokens_per_s"] == pytest.approx(flops / 1e12 / batch.ntokens, rel=1e-9)

    rows = train_rows(synthetic_data, tmp_path / "peak", "--peak-tflops", "0.004")
    for row in rows:
        assert row["mfu"] == pytest.approx(row["tflops_per_rank"] / 0.004, rel=1e-12) and row["mfu"] > 0


def test_bad_peak_is_a_one_line_error(tmp_path, capsys, synthetic_data):
    for value in (0.0, -1.0, float("inf")):
        with pytest.raises(UserError, match="--peak-tflops must be a positive number of TFLOP/s"):
            TrainConfig(save_dir="x", max_steps=1, peak_tflops=value).validate()
    assert cli_main(["train", "--data", str(synthetic_data), "--save-dir", str(tmp_path / "run"), "--arch",
                     "admin-tiny", "--max-steps", "1", "--peak-tflops", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--peak-tflops must be a positive number of TFLOP/s, got 0.0" in err, err
    assert not (tmp_path / "run").exists()


def test_plan_and_the_benchmarks_use_the_library_count(capsys):
    assert cli_main(["plan", "--arch", "admin-60-12", "--max-tokens", "4096", "--sentence-length", "40",
                     "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["model_flops_per_batch"]
    assert figures == {"sentences": 102, "positions": 40,
                       "flops": batch_training_flops(preset_config("admin-60-12"), [40] * 102, [40] * 102)}
    assert cli_main(["plan", "--arch", "admin-60-12", "--sentence-length", "0"]) == 2
    assert "--sentence-length must be positive" in capsys.readouterr().err
    sys.path.insert(0, str(REPO))
    from admin_ds.model import flops
    from bench import bench_model, gpu_check

    assert gpu_check.batch_training_flops is flops.batch_training_flops
    assert bench_model.training_flops is flops.training_flops
    assert importlib.util.find_spec("bench.flops") is None  # no second copy
