"""``admin-ds plan``: parameter counts against built models, model states against DeepSpeed's own estimators,
activations against peaks measured on CPU, and the command's output and bad input.

How the activation peak is measured (docs/plan.md): torch's profiler with ``profile_memory=True`` records
every allocation and free of the CPU allocator with a running "Total Allocated"; a forward + backward of the
fused-loss training step runs under it after a first step has created every ``.grad``, so the maximum of
that running total is the step's own peak above the model's weights and gradients: activations, the
loss's buffers and backward's transient gradients, which is what the planner's "activations" figure
claims to be. A second measure, the bytes autograd keeps (``saved_tensors_hooks``, each storage once,
parameters excluded), checks the "saved" part on its own.
"""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from admin_ds.cli import main as cli_main
from admin_ds.model import PRESETS, TranslationModel, build_model, preset_config
from admin_ds.model.memory import activation_bytes, parameter_count
from admin_ds.training.plan import FIT_FRACTION, GIB, PlanConfig, largest_fitting_max_tokens, make_plan, model_states

from launch_util import REPO, launcher_env


def _built_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(distinct parameters, most parameters one module owns directly), counted on the built model."""
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


VARIANTS = [(arch, {}) for arch in PRESETS] + [
    ("admin-demo", {"residual": "pre-ln"}), ("admin-demo", {"residual": "deepnorm"}),
    ("admin-demo", {"residual": "post-ln", "share_all_embeddings": False, "src_vocab_size": 900}),
    ("admin-demo", {"share_all_embeddings": False, "share_decoder_input_output_embed": False, "ffn_dim": 4000})]


@pytest.mark.parametrize("arch,overrides", VARIANTS, ids=[f"{a}-{'-'.join(map(str, o.values()))}" for a, o in VARIANTS])
def test_parameter_count_matches_the_built_model(arch, overrides):
    cfg = preset_config(arch, **overrides)
    with torch.device("meta"):  # the shapes without the memory: admin-100-100 and the big presets too
        model = TranslationModel(cfg)
    count = parameter_count(cfg)
    assert (count.total, count.largest_layer) == _built_counts(model)


@pytest.mark.parametrize("arch", ["admin-tiny", "admin-demo", "admin-small"])
def test_parameter_count_matches_deepspeed_model_to_params(arch):
    from deepspeed.runtime.zero.stage3 import model_to_params

    count = parameter_count(preset_config(arch))
    assert (count.total, count.largest_layer) == model_to_params(build_model(arch))


SETUPS = [dict(world_size=w, gpus_per_node=g) for w, g in ((1, 1), (8, 8), (16, 8), (64, 4))]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("setup", SETUPS, ids=[f"w{s['world_size']}g{s['gpus_per_node']}" for s in SETUPS])
@pytest.mark.parametrize("arch", ["admin-small", "admin-60-12", "admin-60-12-big"])
def test_model_states_agree_with_deepspeed_estimators(arch, setup, precision):
    """Per-GPU parameters + gradients + optimizer states and the host figure, against DeepSpeed's functions
    for every offload choice they know, fed with the planner's own counts (checked above)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    count = parameter_count(preset_config(arch))
    nodes = setup["world_size"] // setup["gpus_per_node"]
    where = dict(num_gpus_per_node=setup["gpus_per_node"], num_nodes=nodes)
    for offload in (False, True):
        plan = PlanConfig(zero=2, offload=offload, precision=precision, **setup).validate()
        states = model_states(plan, count)
        cpu, gpu = estimate_zero2_model_states_mem_needs(count.total, cpu_offload=offload, **where)
        assert states.gpu_total == pytest.approx(gpu, abs=1) and states.host_per_node == pytest.approx(cpu, abs=1)
    for offload, offload_params in ((False, False), (True, False), (True, True)):
        for zero_init in (False, True):
            plan = PlanConfig(zero=3, offload=offload, offload_params=offload_params, zero_init=zero_init,
                              precision=precision, **setup).validate()
            states = model_states(plan, count)
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                count.total, count.largest_layer, cpu_offload=offload, cpu_offload_params=offload_params,
                zero_init=zero_init, **where)
            assert states.gpu_total == pytest.approx(gpu, abs=1), (offload, offload_params, zero_init)
            assert states.host_per_node == pytest.approx(cpu, abs=1), (offload, offload_params, zero_init)


def test_zero_stages_shrink_the_per_gpu_states_in_order():
    """ZeRO-0 > 1 > 2 > 3 on 8 ranks; ZeRO-0 keeps 20 bytes a parameter in mixed precision (what DeepSpeed's
    ZeRO-2 formula gives for one rank) and 16 in fp32 (weights, gradients, two moments)."""
    count = parameter_count(preset_config("admin-60-12"))
    totals = [model_states(PlanConfig(zero=z, world_size=8).validate(), count).gpu_total for z in range(4)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    assert totals[0] == 20 * count.total
    assert model_states(PlanConfig(zero=0, precision="fp32").validate(), count).gpu_total == 16 * count.total


def _batch(cfg, rows: int, length: int):
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, cfg.src_vocab_size, (rows, length), generator=generator)
    tgt = torch.randint(4, cfg.tgt_vocab_size, (rows, length), generator=generator)
    return src, tgt


def measured_peak(model: TranslationModel, rows: int, length: int, trace) -> int:
    """Peak bytes the CPU allocator holds during one training step, above what it held before the step."""
    src, tgt = _batch(model.cfg, rows, length)

    def step():
        model(src, tgt, target=tgt, label_smoothing=0.1)[0].backward()

    step()  # every .grad exists from here on: the measured step allocates no gradient of its own
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    assert len(totals) > 100, "the profiler recorded no CPU allocations"
    return max(totals)


def measured_saved(model: TranslationModel, rows: int, length: int) -> int:
    """Bytes of the tensors autograd keeps for backward (each storage once, parameters not counted)."""
    src, tgt = _batch(model.cfg, rows, length)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(src, tgt, target=tgt, label_smoothing=0.1)
    return sum(size for ptr, size in kept.items() if ptr not in params)


CASES = [("admin-small", {}, 32, 32), ("admin-small", {"checkpoint_every": 2}, 32, 32),
         ("admin-demo", {}, 64, 32), ("admin-demo", {"checkpoint_every": 1}, 64, 32),
         ("admin-demo", {"residual": "pre-ln", "activation_dropout": 0.1}, 64, 16)]


@pytest.mark.parametrize("arch,overrides,rows,length", CASES,
                         ids=[f"{a}-{'-'.join(map(str, o.values())) or 'plain'}-{r}x{n}" for a, o, r, n in CASES])
def test_activation_figures_match_measured_cpu_peaks(arch, overrides, rows, length, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, **overrides).train()
    estimate = activation_bytes(model.cfg, rows * length, "fp32", device="cpu")
    peak = measured_peak(model, rows, length, tmp_path / "trace.json")
    assert estimate.peak == pytest.approx(peak, rel=0.15), (estimate, peak)
    if not model.cfg.checkpoint_every:
        # The loss's two fp32 gradients are saved tensors too: part of what autograd keeps.
        assert estimate.saved + estimate.loss == pytest.approx(measured_saved(model, rows, length), rel=0.05)


def test_checkpointing_shrinks_the_activation_figure():
    cfg = preset_config("admin-60-12")
    plain, every = (activation_bytes(dataclasses.replace(cfg, checkpoint_every=k), 4096) for k in (0, 1))
    assert every.peak < 0.25 * plain.peak


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "admin_ds", "plan", *args], cwd=REPO, env=launcher_env(),
                          capture_output=True, text=True, timeout=120)


def test_plan_prints_a_table_and_says_whether_it_fits(capsys):
    argv = ["plan", "--arch", "admin-60-12", "--zero", "2", "--world-size", "8", "--precision", "fp16"]
    assert cli_main([*argv, "--gpu-memory", "80"]) == 0
    table = capsys.readouterr().out
    for row in ("parameters", "gradients", "optimizer states", "activations", "total", "host per node"):
        assert f"  {row} " in table
    assert "fits in 80 GiB per GPU" in table and "NOT" not in table
    assert cli_main([*argv, "--gpu-memory", "1"]) == 0  # exit 0 either way
    assert "does NOT fit in 1 GiB" in capsys.readouterr().out


def test_plan_json_holds_the_planner_figures(capsys):
    assert cli_main(["plan", "--arch", "admin-18-18", "--zero", "3", "--world-size", "4", "--precision", "bf16",
                     "--checkpoint-activations", "2", "--max-tokens", "2048", "--gpu-memory", "40", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    setup = PlanConfig(zero=3, world_size=4, precision="bf16", max_tokens=2048, gpu_memory=40).validate()
    expected = make_plan("admin-18-18", preset_config("admin-18-18", checkpoint_every=2), setup)
    assert figures["bytes_per_gpu"] == expected.to_dict()["bytes_per_gpu"]
    assert figures["fits"] is (expected.gpu_total <= 40 * GIB)
    assert figures["model"]["checkpoint_every"] == 2


@pytest.mark.parametrize("arch,gpu_memory", [("admin-60-12", 80), ("admin-60-12-big", 141), ("admin-6-6", 24)])
def test_largest_fitting_max_tokens_is_the_last_batch_that_fits(arch, gpu_memory, capsys):
    cfg = preset_config(arch)
    setup = PlanConfig(zero=2, precision="bf16", gpu_memory=gpu_memory).validate()
    tokens = largest_fitting_max_tokens(arch, cfg, setup)
    total = lambda n: make_plan(arch, cfg, dataclasses.replace(setup, max_tokens=n)).gpu_total  # noqa: E731
    assert tokens is not None and tokens % 1024 == 0
    assert total(tokens) <= FIT_FRACTION * gpu_memory * GIB < total(tokens + 1024)
    assert largest_fitting_max_tokens(arch, cfg, dataclasses.replace(setup, gpu_memory=None)) is None
    assert largest_fitting_max_tokens(arch, cfg, dataclasses.replace(setup, gpu_memory=0.01)) is None
    assert cli_main(["plan", "--arch", arch, "--precision", "bf16", "--gpu-memory", str(gpu_memory)]) == 0
    assert f"largest --max-tokens within 65% of it: {tokens} " in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--arch", "admin-nope"], "unknown preset 'admin-nope'"),
    (["--zero", "4"], "invalid choice: 4"),
    (["--world-size", "0"], "--world-size must be positive"),
    (["--offload", "--zero", "0"], "--offload needs ZeRO 1, 2 or 3"),
    (["--world-size", "8", "--gpus-per-node", "3"], "--gpus-per-node must be positive and divide"),
    (["--max-tokens", "0"], "--max-tokens must be positive"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == ""
