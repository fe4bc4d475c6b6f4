"""Everything DeepSpeed and torch.distributed, behind one boundary: the only package of admin-ds that
imports deepspeed or torch.distributed (import-linter holds it to that for deepspeed;
tests/test_architecture.py for both). The model stays a plain ``nn.Module``; the training loop and the
benchmarks talk to DeepSpeed and to the other ranks only through the functions re-exported here.

- ``processes``: join and leave the process group, the collectives the loop uses.
- ``lifecycle``: the DeepSpeed config, ``initialize``, checkpoints saved, loaded, made universal.
- ``weights``: Admin's ω written into working and master weights, and read back (the rank-0 hook).
- ``steps``: the one training step, the values logged after it, what the divergence guard needs.
- ``internals``: every use of a DeepSpeed or torch internal, each named, with what it works around and
  the versions it was checked on; the installed DeepSpeed is checked against that range at start-up.
"""

from admin_ds.training.engine.internals import check_deepspeed_version
from admin_ds.training.engine.lifecycle import (
    check_ds_config,
    convert_to_universal,
    initialize,
    load_checkpoint,
    model_init_context,
    precision,
    read_ds_config,
    save_checkpoint,
    zero_stage,
    zero_stage_of,
)
from admin_ds.training.engine.processes import (
    add_deepspeed_arguments,
    all_gather_texts,
    all_reduce_sum,
    barrier,
    broadcast_from_rank0,
    exit_skipping_finalization,
    finish_distributed,
    init_distributed,
    is_collective_failure,
    world_size,
)
from admin_ds.training.engine.steps import (
    StepResult,
    clear_skip,
    cut_learning_rate,
    engine_step_info,
    local_grad_norm,
    loss_scale,
    parameter_count,
    skip_next_step,
    train_step,
)
from admin_ds.training.engine.weights import (
    full_parameter,
    gathered_master_state_dict,
    gathered_state_dict,
    omega_hook,
    omega_profile,
    set_parameters,
)

__all__ = [
    "StepResult", "add_deepspeed_arguments", "all_gather_texts", "all_reduce_sum", "barrier", "broadcast_from_rank0",
    "check_deepspeed_version", "check_ds_config", "clear_skip", "convert_to_universal", "cut_learning_rate",
    "engine_step_info", "exit_skipping_finalization",
    "finish_distributed", "full_parameter", "gathered_master_state_dict", "gathered_state_dict", "init_distributed",
    "initialize", "is_collective_failure", "load_checkpoint", "local_grad_norm", "loss_scale",
    "model_init_context", "omega_hook", "omega_profile", "parameter_count", "precision", "read_ds_config",
    "save_checkpoint", "set_parameters", "skip_next_step", "train_step", "world_size", "zero_stage",
    "zero_stage_of",
]
