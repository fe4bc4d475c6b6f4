"""Admin's ω into the weights DeepSpeed owns: write a parameter in working and master copies, read it back,
and the rank-0 hook built on both."""

from __future__ import annotations

from typing import Optional

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

from admin_ds.model import OmegaProfile, profile_omega
from admin_ds.training.engine.internals import fp16_master_view, full_shape, refresh_master_weights
from admin_ds.training.engine.processes import broadcast_from_rank0


def set_parameters(engine, values: list[tuple[torch.nn.Parameter, float]]) -> None:
    """Fill each parameter with a constant on every rank, so that the next step starts from it.

    Editing ``param.data`` after initialize is not enough (docs/deepspeed.md): the optimizer's fp32
    master copy wins at the next step. So: write the working copy (gathered and re-partitioned from rank 0
    under ZeRO-3), then have the optimizer copy working weights into its master weights. Before the first
    step the working and master copies are equal elsewhere, so this refresh changes nothing else.
    The bf16/fp16 refresh rounds, so the master copies of the edited parameters are then set exactly
    through DeepSpeed's safe setter. Every rank must call this.
    """
    params = [param for param, _ in values]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        with torch.no_grad():
            for param, value in values:
                param.fill_(value)
    if not refresh_master_weights(engine.optimizer):
        return  # a plain torch optimizer: the parameters are the master weights
    # The refresh copied bf16/fp16-rounded values; give the master copies of the edited parameters the
    # exact fp32 ones.
    device = get_accelerator().current_device_name()
    for param, value in values:
        master = fp16_master_view(engine.optimizer, param)
        if master is not None:
            master.fill_(value)
            continue
        safe_set_full_fp32_param(param, torch.full(full_shape(param), value, dtype=torch.float32, device=device))


def full_parameter(engine, param: torch.nn.Parameter) -> torch.Tensor:
    """The fp32 master value of a parameter on every rank (the weight itself where there is no master)."""
    value: Optional[torch.Tensor] = fp16_master_view(engine.optimizer, param)
    if value is None:
        value = safe_get_full_fp32_param(param)
    if value is None:
        value = param.detach()
    return value.detach().float().cpu().clone()


def gathered_state_dict(engine) -> dict[str, torch.Tensor]:
    """The full model state dict (working precision -> fp32) on every rank; gathers ZeRO-3 partitions."""
    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {name: tensor.detach().float().cpu().clone() for name, tensor in module.state_dict().items()}


def gathered_master_state_dict(engine) -> dict[str, torch.Tensor]:
    """The full model state dict in fp32 on every rank, each parameter from its fp32 master (what a
    checkpoint's reader exports, not the fp16/bf16 working copy of mixed precision), buffers as the module
    holds them. A collective under ZeRO: every rank must call it."""
    module = engine.module
    masters = {id(param): full_parameter(engine, param) for param in module.parameters()}
    return {name: masters[id(tensor)] if id(tensor) in masters else tensor.detach().float().cpu().clone()
            for name, tensor in module.state_dict(keep_vars=True).items()}


def omega_hook(engine, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor, dropout: bool = True,
               profile: Optional[OmegaProfile] = None) -> OmegaProfile:
    """Admin's rank-0 hook, run after ``initialize`` and before the first optimizer step.

    Every rank runs the profiling forward through the engine (under ZeRO-3 a forward is a collective, so
    rank 0 alone would hang), rank 0's ω is broadcast so every rank has bit-identical values, and ω is
    written into working and master weights on every rank. With ``profile`` given (a profile file or a
    closed form), profiling is skipped and its values are written instead. Returns ω as read back from the weights.
    """
    if profile is None:
        profile = profile_omega(engine.module, src_tokens, tgt_tokens, dropout=dropout, forward=engine)
        values = broadcast_from_rank0(profile.to_tensor().to(src_tokens.device))
        profile = OmegaProfile.from_tensor(values, len(profile.encoder))
    set_parameters(engine, list(profile.targets(engine.module)))
    return omega_profile(engine)


def omega_profile(engine) -> OmegaProfile:
    """ω as the weights hold it now (their fp32 masters where there are some), on every rank.

    ω lives in the weights only; profiles written into checkpoints and run directories are read back from
    them here. Under ZeRO-3 a rank holds only a shard of each ω, so the whole vector is gathered first
    (every rank must call this)."""
    return OmegaProfile.from_model(engine.module, read=lambda param: full_parameter(engine, param))
