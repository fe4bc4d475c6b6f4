"""Processes and collectives: join the group, its timeouts, leave it, and the few collectives the loop uses."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Optional

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from admin_ds.errors import UserError
from admin_ds.training.engine.internals import (
    check_deepspeed_version,
    raised_in_torch_distributed,
    set_default_group_timeout,
    skip_shm_comm_build,
)
from admin_ds.training.rendezvous import RENDEZVOUS_VARIABLES

# --- processes ----------------------------------------------------------------------------------------


def init_distributed(timeout_minutes: Optional[float] = None) -> tuple[int, int, torch.device]:
    """Join (or create) the process group; returns (rank, world_size, device).

    The rendezvous variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) must be in the
    environment: launchers set them, and entry points fill the rest with ``rendezvous.fill_rendezvous_env``.
    ``timeout_minutes`` bounds every collective: a rank whose partner died stops with the process group's
    timeout error instead of waiting forever (torch's default is 30 minutes)."""
    missing = [name for name in RENDEZVOUS_VARIABLES if name not in os.environ]
    if missing:
        raise UserError(f"cannot join a process group: {', '.join(missing)} not set (start through admin-ds "
                        "train or a launcher, or os.environ.update(fill_rendezvous_env(os.environ)) first)")
    check_deepspeed_version()
    # NCCL: abort the communicator on a failed or timed-out collective, so the process exits with it
    # (torch's default since 2.2; set for older versions and launchers that reset the environment).
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        skip_shm_comm_build()  # CPU runs are tests and demos (docs/deepspeed.md)
    if not dist.is_initialized():
        extra = {}
        if timeout_minutes is not None:
            extra["timeout"] = timedelta(minutes=timeout_minutes)
            # also for the groups DeepSpeed builds itself (data parallel, ZeRO): tests/test_rank_death.py
            set_default_group_timeout(extra["timeout"])
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), **extra)
    local_rank = int(os.environ["LOCAL_RANK"])
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
        device = torch.device(accelerator.device_name(local_rank))
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


# DeepSpeed's launcher looks at its ranks once a second and reports the first failed one it sees; two
# seconds is one look to spare.
OUTLIVE_FAILED_PEER_S = 2.0


def finish_distributed(peers_alive: bool = True) -> None:
    """Barrier then destroy: without it two-rank runs sometimes abort at exit after finishing. After a
    collective failed (``peers_alive=False``) there is no one to meet at a barrier: destroy only, then
    wait ``OUTLIVE_FAILED_PEER_S`` so that a launcher's first report names the rank that failed, not this
    one (which only lost contact and would otherwise exit within milliseconds of it)."""
    if dist.is_initialized():
        if peers_alive:
            dist.barrier()
        # DeepSpeed's own destroy: it also drops the groups DeepSpeed cached (its clone of the world group);
        # torch's alone would leave them, and a second run in the same process (a test, a notebook) would
        # hand DeepSpeed a group of the dead world ("Group ... is not registered").
        deepspeed.comm.destroy_process_group()
        if not peers_alive:
            time.sleep(OUTLIVE_FAILED_PEER_S)


def exit_skipping_finalization(status: int) -> None:
    """End a process whose distributed work is over (after ``finish_distributed``) without the interpreter's
    finalization: flush what Python would flush, then ``os._exit(status)``.

    Works around an abort at exit after the work finished ("terminate called without an active exception",
    SIGABRT, the launcher reports a failure). The likely cause (not proven): ``destroy_process_group``
    unregisters the gloo groups, but DeepSpeed still references them (ZeRO-3 parameters keep their group),
    so they are torn down during finalization, when their threads can no longer be joined cleanly. Seen
    with torch 2.13 and deepspeed 0.19.8 in 3 of about 40 two-rank launches with ZeRO-3 cases, after
    barrier-then-destroy had removed the commoner form; and once (in one full test suite) in a rank that had
    lost contact with a hung (SIGSTOPped) peer and destroyed its groups: its status read -6, not 2. Hence for
    every status, failures included. Only for a process's last line. The atexit handlers
    still run first (the run lock is given back by one), through CPython's ``atexit._run_exitfuncs``, the
    function its own shutdown calls (checked on CPython 3.11)."""
    import atexit
    import logging
    import sys

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` came out of torch.distributed: a peer died, hangs past the timeout, or the network
    failed. NCCL raises DistError; gloo a plain RuntimeError, told apart by where it was raised."""
    return isinstance(err, dist.DistError) or raised_in_torch_distributed(err)


def add_deepspeed_arguments(parser) -> None:
    """DeepSpeed's own flags (--deepspeed, --deepspeed_config) plus the launcher's --local_rank."""
    deepspeed.add_config_arguments(parser)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="set by the deepspeed launcher; read from LOCAL_RANK otherwise")


# --- collectives --------------------------------------------------------------------------------------
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The element-wise sum over ranks of a small float tensor, as a new float64 tensor on the CPU.

    gloo (CPU) reduces float64; NCCL reduces on the device, where float32 is the portable choice."""
    if world_size() == 1:
        return values.detach().to("cpu", torch.float64, copy=True)
    reduced = values.detach().to(device, torch.float64 if device.type == "cpu" else torch.float32, copy=True)
    dist.all_reduce(reduced)
    return reduced.to("cpu", torch.float64)


def broadcast_from_rank0(values: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``values`` on every rank (in place; returned for convenience)."""
    if world_size() > 1:
        dist.broadcast(values, src=0)
    return values


def all_gather_texts(texts: list[str], device: torch.device) -> list[list[str]]:
    """Every rank's list of strings, on every rank, in rank order.

    The strings travel as UTF-8 JSON in a uint8 tensor (on ``device``, which NCCL needs), padded to the
    longest rank's length: nothing is pickled, so nothing a peer sends is ever unpickled."""
    if world_size() == 1:
        return [list(texts)]
    data = torch.frombuffer(bytearray(json.dumps(texts).encode("utf-8")), dtype=torch.uint8).to(device)  # [bytes]
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
    lengths = [int(size.item()) for size in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)  # [longest]
    padded[: data.numel()] = data
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded)
    return [json.loads(part[:length].cpu().numpy().tobytes().decode("utf-8"))
            for part, length in zip(gathered, lengths)]
