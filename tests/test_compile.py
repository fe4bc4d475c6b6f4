"""--compile-layers (model/compiled.py): each layer through real torch.compile (inductor, which needs g++ on
CPU), the same numbers as eager, one graph per layer class with no graph breaks, activation checkpointing,
a real `admin-ds train` run, and the refusals."""

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch._inductor.config
from torch._dynamo.utils import counters

from admin_ds.cli import main as cli_main
from admin_ds.errors import UserError
from admin_ds.model import build_model
from admin_ds.model.compiled import compile_layers

from launch_util import REPO, launcher_env


@pytest.fixture(scope="module", autouse=True)
def cxx_compiler():
    """Inductor's CPU backend compiles C++: as root, install g++ from Debian's packages when it is missing
    (as .ci/run does); skip, saying why, only where it cannot be installed."""
    if shutil.which("g++") or shutil.which("c++"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no C++ compiler (g++) for torch.compile's CPU backend, and no root apt-get to install one")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "g++"]):
        subprocess.run(command, env=env, capture_output=True, timeout=900)
    if not shutil.which("g++"):
        pytest.skip("g++ could not be installed with apt-get (torch.compile's CPU backend needs it)")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test counts its own compiles; inductor's compiled kernels stay cached between them."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def batch(seed: int, rows: int = 4, src_len: int = 7, tgt_len: int = 6):
    """Token ids of a tiny model's vocabulary, with padding (id 1) in the source and the target."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 64, (rows, src_len), generator=gen)
    src[0, -2:] = 1
    tgt = torch.randint(4, 64, (rows, tgt_len + 1), generator=gen)
    tgt[1, -1:] = 1
    return src, tgt[:, :-1], tgt[:, 1:]


def loss_and_grads(model, tokens, seed: int):
    """One fwd+bwd with the loss the training step uses; the RNG seeded so dropout can be replayed."""
    model.zero_grad()
    torch.manual_seed(seed)
    loss, _ = model(tokens[0], tokens[1], target=tokens[2], label_smoothing=0.1)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_compiled_layers_give_eager_loss_and_gradients():
    torch.manual_seed(0)
    eager = build_model("admin-tiny", dropout=0.0)
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    assert compile_layers(compiled) == 4
    assert list(compiled.state_dict()) == keys  # in place: checkpoints keep their names
    for step, shape in enumerate([(4, 7, 6), (3, 9, 5)]):  # a second shape: the dynamic graph is reused
        tokens = batch(step, *shape)
        loss_e, grads_e = loss_and_grads(eager, tokens, step)
        loss_c, grads_c = loss_and_grads(compiled, tokens, step)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
        assert grads_c.keys() == grads_e.keys()
        for name in grads_e:
            torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)
    assert counters["stats"]["unique_graphs"] == 2  # one encoder-layer and one decoder-layer graph


def compiled_graphs(layers: int) -> tuple[int, int, dict]:
    """(frames dynamo compiled, graphs, graph breaks) so far, after one training step of a layers+layers
    model with every dropout on, padded source and target (padding and causal masks) and per-layer
    checkpointing."""
    torch.manual_seed(0)
    model = build_model("admin-tiny", encoder_layers=layers, decoder_layers=layers, dropout=0.1,
                        attention_dropout=0.1, activation_dropout=0.1, checkpoint_every=1)
    # aot_eager: dynamo's capture (what is counted here) without inductor's code generation.
    compile_layers(model, backend="aot_eager")
    loss_and_grads(model, batch(0), 0)
    return counters["frames"]["ok"], counters["stats"]["unique_graphs"], dict(counters["graph_break"])


def test_one_graph_per_layer_class_and_no_graph_breaks():
    # One frame and one graph per layer class (encoder, decoder), not per layer; a graph break would add
    # both frames and graphs, and show up in counters["graph_break"].
    assert compiled_graphs(2) == (2, 2, {})
    # Another model of twice the depth in the same process: its 8 layers run the same two graphs.
    assert compiled_graphs(4) == (2, 2, {})


def test_dropout_and_checkpointing_train_with_compiled_layers():
    """Compiled dropout draws its masks with inductor's RNG (not the eager CPU dropout's), so the numbers
    are not eager's. What holds: under checkpoint_every=1 the recomputation gets the forward's masks back
    (checkpoint restores the RNG state), so loss and gradients equal those without checkpointing."""
    torch.manual_seed(0)
    plain = build_model("admin-tiny", dropout=0.1, checkpoint_every=0)
    checkpointed = copy.deepcopy(plain)
    checkpointed.encoder.checkpoint_every = checkpointed.decoder.checkpoint_every = 1
    compile_layers(plain)
    compile_layers(checkpointed)
    tokens = batch(1)
    loss_p, grads_p = loss_and_grads(plain, tokens, 5)
    loss_c, grads_c = loss_and_grads(checkpointed, tokens, 5)
    assert math.isfinite(loss_c.item())
    assert all(torch.isfinite(g).all() for g in grads_c.values())
    torch.testing.assert_close(loss_c, loss_p, rtol=1e-6, atol=1e-6)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], rtol=1e-5, atol=1e-6, msg=name)
    loss_again, _ = loss_and_grads(plain, tokens, 6)
    assert loss_again != loss_p  # dropout is on: another seed, other masks
    optimizer = torch.optim.Adam(checkpointed.parameters(), lr=3e-3)
    losses = []
    for step in range(4):
        loss, _ = loss_and_grads(checkpointed, tokens, step)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it learns


def train(data, save_dir, steps: int, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "admin_ds", "train", "--data", str(data), "--arch", "admin-tiny",
                           "--save-dir", str(save_dir), "--max-steps", str(steps), "--max-tokens", "300",
                           "--log-interval", "1", "--save-interval", "3", "--validate-interval", "0",
                           "--warmup-updates", "5", "--lr", "2e-3", "--no-tensorboard", "--compile-layers", *extra],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_command_compiles_layers_and_resumes(tmp_path, synthetic_data):
    from admin_ds.checkpoints.load import load_model

    save = tmp_path / "run"
    first = train(synthetic_data, save, 3, "--checkpoint-activations", "1")
    second = train(synthetic_data, save, 5, "--checkpoint-activations", "1")  # resumes from global_step3
    for proc in (first, second):
        assert "compiling 4 layers with torch.compile" in proc.stderr
    assert "resumed from" in second.stderr
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) for row in rows)
    assert (save / "latest").read_text().strip() == "global_step5"
    model = load_model(save)  # the checkpoint has the eager model's parameter names
    assert set(model.state_dict()) == set(build_model("admin-tiny", src_vocab_size=model.cfg.src_vocab_size,
                                                      tgt_vocab_size=model.cfg.tgt_vocab_size,
                                                      share_all_embeddings=model.cfg.share_all_embeddings
                                                      ).state_dict())


def test_zero3_is_refused_in_one_line(tmp_path, synthetic_data, capsys):
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}))
    status = cli_main(["train", "--data", str(synthetic_data), "--arch", "admin-tiny", "--max-steps", "1",
                       "--save-dir", str(tmp_path / "run"), "--compile-layers", "--deepspeed_config", str(config)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and "ZeRO stage 3" in err, err
    assert not (tmp_path / "run").exists()


def test_no_compiler_and_profiling_are_refused(monkeypatch):
    model = build_model("admin-tiny")
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/g++",))
    with pytest.raises(UserError, match="needs a C\\+\\+ compiler"):
        compile_layers(model)
    monkeypatch.undo()
    model.encoder.layers[0].ffn_residual.profiler = lambda x, y: torch.ones(())
    with pytest.raises(RuntimeError, match="compile after it"):
        compile_layers(model, backend="aot_eager")
