"""`admin-ds convert`: DeepSpeed checkpoints of every ZeRO stage (two real ranks) to fp32 safetensors and to a
plain Post-LN model on stock torch.nn layers; the standalone plain.py; zero_to_fp32 files; bad input."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from agreement import assert_decoders_agree, model_score
from safetensors.torch import load_file
from stock_reference import real_batch, stock_logits
from torch import nn

import admin_ds
from admin_ds.checkpoints.exports import write_export
from admin_ds.cli import main as cli_main
from admin_ds.data import ParallelDataset
from admin_ds.inference.beam import generate
from admin_ds.model import OmegaProfile, build_model
from admin_ds.model.reparam import fold_shortcut_scales, to_plain

from launch_util import REPO, run_torchrun

# name -> (zero_optimization section, extra train flags). The offload case keeps torch's Adam
# (zero_force_ds_cpu_optimizer off) so that no CPU-Adam extension is compiled; its files are ZeRO-2's.
CASES = {
    "z0": ({"stage": 0}, []),
    "z1": ({"stage": 1}, []),
    "z2": ({"stage": 2}, []),
    "z2-offload": ({"stage": 2, "offload_optimizer": {"device": "cpu"}}, []),
    "z3": ({"stage": 3, "stage3_param_persistence_threshold": 0}, []),
    "z3-zero-init": ({"stage": 3, "stage3_param_persistence_threshold": 0}, ["--zero-init"]),
}
STEPS = 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data):
    """Every case trained for a few high-lr steps in ONE two-rank launch; returns (tmp, live-weights dir)."""
    tmp = tmp_path_factory.mktemp("convert")
    cases = []
    for name, (zero, extra) in CASES.items():
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero}
        if "offload_optimizer" in zero:
            config["zero_force_ds_cpu_optimizer"] = False
        (tmp / f"{name}.json").write_text(json.dumps(config))
        argv = ["--data", str(synthetic_data), "--arch", "admin-tiny", "--save-dir", str(tmp / name),
                "--max-steps", str(STEPS), "--max-tokens", "400", "--log-interval", "1", "--save-interval", "100",
                "--warmup-updates", "1", "--lr", "5e-2", "--no-tensorboard", "--validate-interval", "0",
                "--deepspeed_config", str(tmp / f"{name}.json"), *extra]
        cases.append({"name": name, "argv": argv})
    (tmp / "cases.json").write_text(json.dumps(cases))
    (tmp / "live").mkdir()
    run_torchrun(["tests/scripts/train_cases.py", str(tmp / "cases.json"), str(tmp / "live")])
    return tmp


def convert_cli(*argv) -> int:
    return cli_main(["convert", *map(str, argv)])


def live_weights(runs: Path, name: str) -> dict:
    return torch.load(runs / "live" / f"{name}-rank0.pt")


# --- every ZeRO stage, two ranks -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_fp32_export_equals_live_weights(runs, tmp_path, name):
    live = live_weights(runs, name)
    assert convert_cli(runs / name, tmp_path / "out") == 0
    loaded = admin_ds.load_model(tmp_path / "out")
    for source in (loaded, admin_ds.load_model(runs / name), admin_ds.load_model(runs / name / f"global_step{STEPS}")):
        state = source.state_dict()
        assert state.keys() == live.keys()
        for key in live:
            assert torch.equal(state[key], live[key]), f"{key} differs from the live gathered weights"
    # On disk: tied tables once, every value fp32.
    stored = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in stored.values())
    assert len(stored) == len(live) - 2  # tgt_embed.table and output_proj share src_embed.table
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["converted_from"]["zero_stage"] == CASES[name][0]["stage"]
    assert config["converted_from"]["world_size"] == 2
    assert (tmp_path / "out" / "spm.model").is_file() and config["spm_model"] == "spm.model"


@pytest.mark.slow
def test_same_weights_as_deepspeeds_own_consolidation(runs):
    # DeepSpeed's own consolidation as the reference. It unpickles with weights_only=False, which is why
    # the package never calls it: here it reads only checkpoints this test made.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for name in ("z1", "z2-offload", "z3-zero-init"):
        ours = admin_ds.load_model(runs / name).state_dict()
        theirs = get_fp32_state_dict_from_zero_checkpoint(str(runs / name))
        for key, value in theirs.items():
            assert torch.equal(ours[key], value), f"{name}: {key}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_plain_logits_equal_original(runs, synthetic_data, tmp_path, name):
    original = admin_ds.load_model(runs / name)
    # A trained Admin model: ω far from 1 and moved away from the profiled scalars.
    profile = OmegaProfile.read(runs / name / "omega.profile")
    omegas = torch.stack([r.omega.detach() for r in original.residuals("encoder")])  # [sublayers, D]
    assert omegas[1:].mean() > 1.3
    drift = (omegas - torch.tensor(profile.encoder)[:, None]).abs().max()
    assert drift > 0.1, f"ω barely moved from its profile ({drift:.3f})"
    spread = (omegas.max(dim=1).values - omegas.min(dim=1).values)[1:]
    assert spread.min() > 0.05, "trained ω should differ per dimension (a vector, not one scalar)"
    assert convert_cli(runs / name, tmp_path / "plain", "--plain") == 0
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["norm_first"] is False and config["source_residual"] == "admin"
    src, tgt = real_batch(synthetic_data)
    with torch.no_grad():
        expected = original(src, tgt)
    got = stock_logits(tmp_path / "plain", src, tgt)
    assert (got - expected).abs().max() <= 1e-4
    # The plain export loads back into admin_ds as a Post-LN model with the same logits.
    again = admin_ds.load_model(tmp_path / "plain")
    assert again.cfg.residual == "post-ln"
    with torch.no_grad():
        assert (again(src, tgt) - expected).abs().max() <= 1e-4


# --- plain export of models built directly ---------------------------------------------------------------
def randomised(residual: str, share: bool, seed: int = 0):
    """A tiny model whose LayerNorms (and ω) are far from their init, so folding mistakes show."""
    torch.manual_seed(seed)
    model = build_model("admin-tiny", residual=residual, encoder_layers=3, decoder_layers=2,
                        share_all_embeddings=share, share_decoder_input_output_embed=share).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            omega = getattr(module, "omega", None)
            if isinstance(omega, nn.Parameter):
                omega.uniform_(0.5, 6.0)
    return model


@pytest.mark.parametrize("residual,share", [("admin", True), ("admin", False), ("post-ln", True),
                                            ("pre-ln", False), ("deepnorm", True)])
def test_plain_export_of_each_scheme(tmp_path, residual, share):
    model = randomised(residual, share)
    write_export(model, tmp_path / "fp32")
    assert convert_cli(tmp_path / "fp32", tmp_path / "plain", "--plain") == 0
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["norm_first"] is (residual == "pre-ln")
    keys = load_file(str(tmp_path / "plain" / "model.safetensors")).keys()
    assert ("encoder.norm.weight" in keys and "decoder.norm.bias" in keys) is (residual == "pre-ln")
    src = torch.randint(4, 64, (3, 7))
    src[:, -1] = 3
    src[1, 4:] = 0
    src[1, 3] = 3
    tgt = torch.randint(4, 64, (3, 5))
    tgt[:, 0] = 2
    tgt[2, 3:] = 0
    with torch.no_grad():
        expected = model(src, tgt)
    assert (stock_logits(tmp_path / "plain", src, tgt) - expected).abs().max() <= 1e-4
    with torch.no_grad():
        assert (admin_ds.load_model(tmp_path / "plain")(src, tgt) - expected).abs().max() <= 1e-4
    # The API gives the same tensors without touching the model.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings, state = to_plain(model)
    assert settings == {k: v for k, v in config.items() if k in settings}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    on_disk = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert state.keys() == on_disk.keys() and all(torch.equal(state[k], on_disk[k]) for k in state)


def test_folded_model_reexports_its_position_tables(tmp_path):
    """After folding, positions carry ω_1; an fp32 export of the folded model keeps them."""
    model = randomised("admin", True)
    src, tgt = torch.randint(4, 64, (2, 6)), torch.randint(4, 64, (2, 4))
    with torch.no_grad():
        expected = model(src, tgt)
        folded = fold_shortcut_scales(model)
        assert folded.cfg.residual == "post-ln" and (folded(src, tgt) - expected).abs().max() <= 1e-4
    write_export(folded, tmp_path / "folded")
    assert "src_embed.positions" in load_file(str(tmp_path / "folded" / "model.safetensors"))
    with torch.no_grad():
        assert torch.equal(admin_ds.load_model(tmp_path / "folded")(src, tgt), folded(src, tgt))


# --- plain.py on its own ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_plain_py_alone_without_admin_ds_or_deepspeed(runs, synthetic_data, tmp_path):
    name = "z2"
    assert convert_cli(runs / name, tmp_path / "plain", "--plain") == 0
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(REPO / "admin_ds" / "plain.py", alone / "plain.py")
    dataset = ParallelDataset.load(synthetic_data, "valid")
    sources = [list(map(int, dataset[i][0])) + [3] for i in range(4)]
    script = textwrap.dedent(f"""
        import contextlib, io, json, runpy, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("admin_ds", "deepspeed"):
                    raise ImportError("blocked by the test: " + name)
                return None

        sys.meta_path.insert(0, Block())
        sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
        plain = runpy.run_path({str(alone / 'plain.py')!r}, run_name="plain_module")
        model = plain["load_plain"]({str(tmp_path / 'plain')!r})
        ids = [plain["greedy"](model, src) for src in {sources!r}]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = plain["main"]([{str(tmp_path / 'plain')!r}, "--ids", "{' '.join(map(str, sources[0][:-1]))}"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("admin_ds", "deepspeed"))
        print(json.dumps({{"ids": ids, "rc": rc, "cli": out.getvalue(), "loaded": loaded}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=alone, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and report["rc"] == 0
    original = admin_ds.load_model(runs / name)
    expected = [generate(original, torch.tensor([src]), beam=1)[0][0].tokens for src in sources]
    # Stock torch.nn layers and ours are two kernels: agreement up to rounding ties (tests/agreement.py).
    assert_decoders_agree(expected, report["ids"], lambda i, ids: model_score(original, sources[i], ids),
                          what="plain.py greedy vs ours")
    assert "greedy ids: " + " ".join(map(str, report["ids"][0])) in report["cli"]
    assert "Post-LN" in report["cli"]


# --- other inputs ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_zero_to_fp32_state_dict_file(runs, tmp_path):
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

    save = tmp_path / "save"
    shutil.copytree(runs / "z3", save)
    convert_zero_checkpoint_to_fp32_state_dict(str(save), str(save / "fp32"), max_shard_size=None)
    live = live_weights(runs, "z3")
    for path in (save / "fp32", save / "fp32" / "pytorch_model.bin"):  # train_config.json found above it
        state = admin_ds.load_model(path).state_dict()
        assert all(torch.equal(state[k], live[k]) for k in live)
    lone = tmp_path / "lone.bin"
    shutil.copy(save / "fp32" / "pytorch_model.bin", lone)
    assert convert_cli(lone, tmp_path / "out", "--config", save / "train_config.json") == 0
    assert all(torch.equal(admin_ds.load_model(tmp_path / "out").state_dict()[k], live[k]) for k in live)


def assert_one_line_error(capsys, argv, *fragments, out=None):
    assert convert_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("admin-ds convert: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    if out is not None:
        assert not out.exists(), "nothing may be written on error"
    return err


@pytest.mark.slow
def test_bad_input(runs, tmp_path, capsys):
    out = tmp_path / "out"
    # Not a checkpoint.
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    assert_one_line_error(capsys, [tmp_path / "junk", out], "not a checkpoint", out=out)
    assert_one_line_error(capsys, [tmp_path / "missing", out], "not found", out=out)
    # A truncated ZeRO shard.
    broken = tmp_path / "broken"
    shutil.copytree(runs / "z2", broken)
    shard = broken / f"global_step{STEPS}" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert_one_line_error(capsys, [broken, out], "cannot read", shard.name, out=out)
    shard.unlink()
    assert_one_line_error(capsys, [broken, out], "expected 2 optimizer shards, found 1", out=out)
    # A truncated safetensors file.
    write_export(build_model("admin-tiny"), tmp_path / "export")
    weights = tmp_path / "export" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_one_line_error(capsys, [tmp_path / "export", out, "--plain"], "cannot read", out=out)
    # Checkpoints of another architecture: a config that does not fit the shards, a foreign state dict.
    other = tmp_path / "other"
    shutil.copytree(runs / "z3", other)
    states_file = other / f"global_step{STEPS}" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    states = torch.load(states_file, weights_only=False)
    states["model_config"]["ffn_dim"] = 48
    torch.save(states, states_file)
    assert_one_line_error(capsys, [other, out], "encoder.layers.0.ffn.fc1.weight", "(48, 32)", out=out)
    foreign = tmp_path / "foreign.pt"
    torch.save(nn.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                              batch_first=True).state_dict(), foreign)
    assert_one_line_error(capsys, [foreign, out, "--config", runs / "z2" / "train_config.json"],
                          "unexpected weight", "encoder.layers.0", out=out)
    assert_one_line_error(capsys, [foreign, out], "--config", out=out)
    # An existing output without --force is left alone; with --force it is replaced.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(capsys, [runs / "z2", out], "exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    assert convert_cli(runs / "z2", out, "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert_one_line_error(capsys, [runs / "z2", tmp_path / "out2", "--tag", "global_step999"], "global_step999",
                          out=tmp_path / "out2")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary leftovers


def test_load_model_of_exports_needs_no_deepspeed(tmp_path):
    model = randomised("admin", False)
    write_export(model, tmp_path / "fp32")
    settings, state = to_plain(model)
    from admin_ds.checkpoints.exports import write_model_dir

    write_model_dir(tmp_path / "plain", settings, list(state.items()))
    script = textwrap.dedent(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "deepspeed":
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import admin_ds
        for path in ({str(tmp_path / 'fp32')!r}, {str(tmp_path / 'plain')!r}):
            admin_ds.load_model(path)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_convert_carries_the_tokenizer_or_says_it_cannot(tmp_path, caplog):
    model = build_model("admin-tiny").eval()
    write_export(model, tmp_path / "bare")  # no sentencepiece model anywhere near it
    with caplog.at_level("WARNING", logger="admin_ds"):
        assert convert_cli(tmp_path / "bare", tmp_path / "out") == 0
    assert "no sentencepiece model found" in caplog.text and "--spm" in caplog.text
    assert not (tmp_path / "out" / "spm.model").exists()
    # With one beside the checkpoint, the export carries its own copy and says where it is.
    (tmp_path / "bare" / "spm.model").write_bytes(b"not a real model, only bytes to copy")
    caplog.clear()
    assert convert_cli(tmp_path / "bare", tmp_path / "out2") == 0
    assert "no sentencepiece model" not in caplog.text
    assert (tmp_path / "out2" / "spm.model").read_bytes() == (tmp_path / "bare" / "spm.model").read_bytes()
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["spm_model"] == "spm.model"


def fused_half_checkpoint(tmp_path: Path, flats) -> Path:
    """A ZeRO-0 checkpoint laid out as DeepSpeed's FP16_Optimizer (fused optimizers) saves it: bf16 working
    weights as the module, the fp32 masters as one flat tensor per optimizer group."""
    model = build_model("admin-tiny")
    tag_dir = tmp_path / "global_step1"
    tag_dir.mkdir(parents=True)
    masters = flats(model)
    states = {"module": {name: tensor.bfloat16() for name, tensor in model.state_dict().items()},
              "optimizer": {"fp32_groups_flat": masters}, "model_config": model.cfg.to_dict()}
    torch.save(states, tag_dir / "mp_rank_00_model_states.pt")
    return tag_dir


def test_a_fused_half_zero0_checkpoint_loads_its_flat_fp32_masters(tmp_path):
    def flats(model):
        torch.manual_seed(3)
        for param in model.parameters():
            param.data.add_(torch.randn_like(param) * 1e-3)  # values between bf16 steps
        return [torch.cat([param.detach().reshape(-1) for param in model.parameters()])]

    tag_dir = fused_half_checkpoint(tmp_path, flats)
    expected = torch.load(tag_dir / "mp_rank_00_model_states.pt")["optimizer"]["fp32_groups_flat"][0]
    loaded = torch.cat([param.detach().reshape(-1) for param in admin_ds.load_model(tag_dir).parameters()])
    assert torch.equal(loaded, expected)


@pytest.mark.parametrize("flats, problem", [
    (lambda model: [torch.zeros(5)], "do not fit the model's parameters"),
    (lambda model: [torch.cat([p.detach().reshape(-1) for p in model.parameters()]).flip(0)],
     "does not match its working weight"),
])
def test_fp32_masters_that_do_not_fit_are_one_clear_error(tmp_path, flats, problem):
    tag_dir = fused_half_checkpoint(tmp_path, flats)
    with pytest.raises(admin_ds.errors.UserError, match=problem):
        admin_ds.load_model(tag_dir)
