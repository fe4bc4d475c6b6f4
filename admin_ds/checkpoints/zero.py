"""Reading DeepSpeed checkpoints of ``admin-ds train`` at any ZeRO stage and world size, one shard at a time.

ZeRO-0 keeps the whole model in ``mp_rank_00_model_states.pt`` (in fp16/bf16 the module holds the working
weights and the optimizer entry their fp32 masters); ZeRO-1/2/3 keep the fp32 master weights in one
``*_optim_states.pt`` shard per rank. The shards are read one after the other into a single fp32
model, so the process holds about one copy of the weights plus one shard (bench/bench_convert.py).
The layouts read here are DeepSpeed's private ones; tests compare the result with DeepSpeed's own
``zero_to_fp32`` for every stage (tests/test_convert.py), on the DeepSpeed versions setup.py allows.
"""

from __future__ import annotations

import bisect
import math
import re
from pathlib import Path
from typing import Optional

import torch

from admin_ds.checkpoints.exports import WeightFiller, find_model_config
from admin_ds.checkpoints.pickles import torch_load
from admin_ds.checkpoints.rundir import LATEST, TRAIN_CONFIG, latest_tag
from admin_ds.errors import UserError
from admin_ds.model import ModelConfig, TranslationModel
from admin_ds.model.residual import omega_parameters


# --- DeepSpeed files ----------------------------------------------------------------------------------
def model_states_file(directory: Path) -> Optional[Path]:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (directory / name).is_file():
            return directory / name
    return None


def is_deepspeed_dir(path: Path) -> bool:
    return ((path / LATEST).is_file() or model_states_file(path) is not None
            or any(p.is_dir() for p in path.glob("global_step*")))



# --- DeepSpeed checkpoints of `admin-ds train` -------------------------------------------------------------
_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def rank_files(tag_dir: Path, rank: int, stage: int) -> list[Path]:
    """The files DeepSpeed's save writes for ``rank`` at ZeRO ``stage``: its optimizer shard (``bf16_``-prefixed
    from DeepSpeed's bf16 optimizer, ZeRO-1 in bf16), its model-states shard at ZeRO-3, and rank 0's model
    states below ZeRO-3 (which hold the optimizer too at ZeRO-0)."""
    shard = f"zero_pp_rank_{rank}_mp_rank_00"
    files = []
    if stage >= 1:
        files.append(next(tag_dir.glob(f"*{shard}_optim_states.pt"), tag_dir / f"{shard}_optim_states.pt"))
    if stage == 3:
        files.append(tag_dir / f"{shard}_model_states.pt")
    elif rank == 0:
        files.append(tag_dir / "mp_rank_00_model_states.pt")
    return files


def saved_world_size(tag_dir: Path) -> Optional[int]:
    """The number of ranks that wrote a checkpoint folder: its optimizer shards, one per data-parallel rank.
    None when it has none (ZeRO-0 in fp32: the model states file holds everything, for any world size)."""
    return len([p for p in tag_dir.glob("*_optim_states.pt") if _SHARD.search(p.name)]) or None


def find_tag_dir(path: Path, tag: Optional[str] = None) -> Path:
    """The checkpoint folder: ``path`` itself if it holds model states, else ``path/TAG`` (``latest``)."""
    if model_states_file(path) is not None:
        if tag is None or tag == path.name:
            return path
        path = path.parent
    if tag is None:
        tag = latest_tag(path)
        if tag is None:
            raise UserError(f"{path}: no '{LATEST}' file; pass --tag (one of: "
                            f"{', '.join(sorted(p.name for p in path.glob('global_step*'))) or 'none found'})")
    tag_dir = path / tag
    if model_states_file(tag_dir) is None:
        raise UserError(f"{tag_dir}: no DeepSpeed model states file (checkpoint tag {tag!r} missing or incomplete)")
    return tag_dir


def read_deepspeed_checkpoint(path: Path, tag: Optional[str] = None,
                              config: Optional[ModelConfig] = None) -> tuple[TranslationModel, dict]:
    """A DeepSpeed checkpoint of ``admin-ds train`` into an fp32 model, holding one shard at a time."""
    tag_dir = find_tag_dir(path, tag)
    states_file = model_states_file(tag_dir)
    states = torch_load(states_file)
    if not isinstance(states, dict) or "module" not in states:
        raise UserError(f"cannot read {states_file} (not a DeepSpeed model states file)")
    if config is None:
        if isinstance(states.get("model_config"), dict):
            config = ModelConfig.from_dict(states["model_config"], source=str(states_file))
        else:
            config = find_model_config(tag_dir.parent)
    if config is None:
        raise UserError(f"{tag_dir}: no admin-ds model config in the checkpoint or a {TRAIN_CONFIG} beside it "
                        "(not written by `admin-ds train`?); pass --config FILE")
    model = TranslationModel(config)
    filler = WeightFiller(model, str(tag_dir))
    shards = sorted(tag_dir.glob("*_optim_states.pt"))
    info = {"source": str(tag_dir), "tag": tag_dir.name, "step": states.get("step"),
            "world_size": states.get("dp_world_size"), "zero_stage": 0}
    if not shards and states.get("param_shapes"):
        raise UserError(f"{tag_dir}: its optimizer shards (*_optim_states.pt), which hold the fp32 weights, are "
                        "missing")
    if not shards:  # ZeRO-0: the model states hold the weights, and in fp16/bf16 their fp32 masters
        for name, tensor in states["module"].items():
            filler.copy(name, tensor)
        masters = zero0_fp32_masters(states.get("optimizer"))
        if masters is not None:
            _copy_zero0_masters(model, masters, states_file)
    else:
        info.update(_read_zero_shards(tag_dir, states, shards, filler))
    del states
    filler.finish()
    return model, info


def zero0_fp32_masters(optimizer_state) -> Optional[list[list[torch.Tensor]]]:
    """The fp32 master weights of a ZeRO-0 fp16/bf16 run, per optimizer group, one tensor per parameter in
    the group's order; None where the model states hold no masters (fp32: the weights are the masters).

    Works around ZeRO-0 in half precision saving its half-precision working weights as the ``module``:
    the fp32 masters are only in the optimizer's state, as ``fp32_groups_flat`` (DeepSpeed's
    FP16_Optimizer, picked for fused optimizers: one flat tensor per group, parameters end to end) or
    ``fp32_groups`` (FP16_UnfusedOptimizer: a list per group). Layouts of DeepSpeed 0.19."""
    if not isinstance(optimizer_state, dict):
        return None
    if optimizer_state.get("fp32_groups") is not None:
        return [list(group) for group in optimizer_state["fp32_groups"]]
    if optimizer_state.get("fp32_groups_flat") is not None:
        return [[flat] for flat in optimizer_state["fp32_groups_flat"]]  # cut into parameters by the caller
    return None


def _zero0_group_orders(model: TranslationModel) -> list[list[list[tuple[str, torch.nn.Parameter]]]]:
    """The ways ``admin-ds train`` groups the parameters for its optimizer (training/setup.py's
    ``parameter_groups``): all in model order, or, with a scaled ω learning rate, all but ω, then ω."""
    params = list(model.named_parameters())
    omegas = {id(omega) for omega in omega_parameters(model)}
    orders = [[params]]
    if omegas:
        orders.append([[(n, p) for n, p in params if id(p) not in omegas],
                       [(n, p) for n, p in params if id(p) in omegas]])
    return orders


def _cut_into(group: list[torch.Tensor], members: list[tuple[str, torch.nn.Parameter]]) -> Optional[list]:
    """A group's masters, one per member: as saved, or cut from one flat tensor; None if they do not fit."""
    if len(group) == len(members) and all(t.shape == p.shape for t, (_, p) in zip(group, members)):
        return group
    if len(group) != 1 or group[0].dim() != 1 or group[0].numel() != sum(p.numel() for _, p in members):
        return None
    pieces, offset = [], 0
    for _, param in members:
        pieces.append(group[0][offset: offset + param.numel()].view(param.shape))
        offset += param.numel()
    return pieces


def _copy_zero0_masters(model: TranslationModel, masters: list[list[torch.Tensor]], source: Path) -> None:
    """Overwrite the model's weights (already filled with the working weights) with their fp32 masters. The
    layout is matched by shapes, and each master must round to its working weight: a misread layout fails
    loudly instead of exporting shuffled weights."""
    for order in _zero0_group_orders(model):
        if len(order) != len(masters):
            continue
        cut = [_cut_into(group, members) for group, members in zip(masters, order)]
        if any(pieces is None for pieces in cut):
            continue
        pairs = [(member, master) for members, pieces in zip(order, cut) for member, master in zip(members, pieces)]
        with torch.no_grad():
            for (name, param), master in pairs:
                working = param.detach().float()
                if not torch.allclose(master.float(), working, rtol=1e-2, atol=1e-3):
                    raise UserError(f"{source}: the fp32 master of {name} does not match its working weight "
                                    "(an unexpected DeepSpeed layout); convert with a fp32 run's checkpoint")
            for (_, param), master in pairs:
                param.copy_(master)
        return
    raise UserError(f"{source}: its fp32 master weights ({len(masters)} optimizer groups) do not fit the model's "
                    "parameters (a checkpoint of another architecture?)")


def _read_zero_shards(tag_dir: Path, states: dict, shards: list[Path], filler: WeightFiller) -> dict:
    """Copy the fp32 master partitions of every rank into the model, one shard file at a time.

    ZeRO-1/2: per parameter group, the parameters are laid end to end (each followed by its alignment
    padding) in one flat vector cut into equal partitions, rank r holding partition r.
    ZeRO-3: every parameter is padded to a multiple of the world size and cut into equal pieces; rank r's
    flat vector holds piece r of each parameter in order.
    """
    ranks = {}
    for shard in shards:
        match = _SHARD.search(shard.name)
        if match is None:
            raise UserError(f"{shard}: unexpected optimizer shard name")
        ranks[int(match.group(1))] = shard
    if any(frozen for frozen in (states.get("frozen_param_shapes") or {}, states.get("frozen_param_fragments") or {})):
        raise UserError(f"{tag_dir}: checkpoints with frozen parameters are not supported")
    groups = states.get("param_shapes")
    if not groups:
        raise UserError(f"{tag_dir}: the model states list no parameter shapes")
    for shapes in groups:  # fail on another architecture before reading any shard
        for name, shape in shapes.items():
            filler.target(name, shape)
    first = None
    for rank in range(len(ranks)):
        if rank not in ranks:
            raise UserError(f"{tag_dir}: optimizer shard of rank {rank} is missing")
        optim = torch_load(ranks[rank]).get("optimizer_state_dict", {})
        if "zero_stage" in optim:
            stage = int(optim["zero_stage"])
        elif "single_partition_of_fp32_groups" in optim:
            stage = 1  # DeepSpeed's bf16 optimizer at ZeRO-0 keeps its fp32 masters in ZeRO-1's layout
        else:
            raise UserError(f"cannot read {ranks[rank]} (no ZeRO optimizer state)")
        world = optim.get("partition_count")
        world = max(world) if isinstance(world, (list, tuple)) else int(world)
        if first is None:
            first = (stage, world)
            if world != len(ranks):
                raise UserError(f"{tag_dir}: expected {world} optimizer shards, found {len(ranks)} "
                                "(an incomplete or overwritten checkpoint?)")
        elif (stage, world) != first:
            raise UserError(f"{ranks[rank]}: ZeRO stage/world size {(stage, world)} differ from rank 0's {first}")
        if stage <= 2:
            _copy_zero12(optim["single_partition_of_fp32_groups"], groups, optim.get("param_alignment_paddings"),
                         rank, world, filler, ranks[rank])
        else:
            _copy_zero3(optim["fp32_flat_groups"], groups, rank, world, filler, ranks[rank])
        del optim
    return {"zero_stage": first[0], "world_size": first[1]}


def _copy_zero12(flats, groups, paddings, rank: int, world: int, filler: WeightFiller, shard: Path) -> None:
    if len(flats) != len(groups):
        raise UserError(f"{shard}: {len(flats)} parameter groups, the model states list {len(groups)}")
    with torch.no_grad():
        for g, (shapes, flat) in enumerate(zip(groups, flats)):
            size = flat.numel()
            start, end, offset = rank * size, (rank + 1) * size, 0
            for j, (name, shape) in enumerate(shapes.items()):
                numel = math.prod(shape)
                lo, hi = max(offset, start), min(offset + numel, end)
                if lo < hi:
                    filler.target(name, shape).view(-1)[lo - offset: hi - offset].copy_(flat[lo - start: hi - start])
                offset += numel + (paddings[g][j] if paddings else 0)
            if offset > size * world:
                raise UserError(f"{shard}: partitions of {size} values cannot hold the {offset} of group {g}")


def _copy_zero3(flats, groups, rank: int, world: int, filler: WeightFiller, shard: Path) -> None:
    bounds = [0]
    for flat in flats:
        bounds.append(bounds[-1] + flat.numel())

    def read(start: int, length: int) -> torch.Tensor:  # [length] from the rank's concatenated groups
        pieces = []
        while length > 0:
            g = bisect.bisect_right(bounds, start) - 1
            take = min(length, bounds[g + 1] - start)
            pieces.append(flats[g][start - bounds[g]: start - bounds[g] + take])
            start, length = start + take, length - take
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    offset = 0
    with torch.no_grad():
        for shapes in groups:
            for name, shape in shapes.items():
                numel = math.prod(shape)
                piece = math.ceil(numel / world)
                if offset + piece > bounds[-1]:
                    raise UserError(f"{shard}: holds {bounds[-1]} values, too few for the parameter shapes")
                lo, hi = rank * piece, min((rank + 1) * piece, numel)
                if lo < hi:
                    filler.target(name, shape).view(-1)[lo:hi].copy_(read(offset, hi - lo))
                offset += piece
    if offset != bounds[-1]:
        raise UserError(f"{shard}: holds {bounds[-1]} values but the parameter shapes need {offset}")
