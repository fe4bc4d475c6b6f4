"""How fast training runs: the model FLOP/s of each log window and, where the device's peak is known, MFU.

FLOPs are ``admin_ds.model.flops``'s count (the one ``admin-ds plan`` and bench/ use) of each micro-batch's
own positions, from the lengths ``collate`` left on the host (``Batch.src_lengths``, ``tgt_lengths``): no
tensor is read, so counting adds no host sync. The loop sums them per rank on the host and adds the sum to
the one reduction its log rows already make (training/window.py), so a row has the whole world's FLOPs.

``tflops_per_rank`` = FLOPs of every rank's updates in the window / ranks / the window's wall time / 1e12:
the mean rate of one device. ``mfu`` = tflops_per_rank / the peak of one device (``--peak-tflops``, else
``PEAK_TFLOPS`` by the CUDA device's name); on a CPU, or a GPU not in the table, rows have no ``mfu``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from admin_ds.data import Batch
from admin_ds.model import ModelConfig
from admin_ds.model.flops import batch_training_flops, training_flops

log = logging.getLogger("admin_ds")

# Dense (no 2:4 sparsity) 16-bit tensor-core peaks per GPU in TFLOP/s, bf16 where the GPU has it, else fp16,
# keyed by a part of torch.cuda.get_device_name(); the longest key found in the name wins ("H100 PCIe"
# before "H100", "A100" before "A10"). From NVIDIA's datasheets; where a datasheet gives only the figure
# with sparsity, half of it.
PEAK_TFLOPS: dict[str, Optional[float]] = {
    "H100": 989.5,       # H100 SXM datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity
    "H100 PCIe": 756.5,  # same datasheet, H100 PCIe: 1,513 with sparsity
    "H100 NVL": 835.5,   # same datasheet, H100 NVL: 1,671 with sparsity
    "H200": 989.5,       # H200 datasheet, H200 SXM: 1,979 with sparsity (GH200's name matches: its GPU is the same)
    "H200 NVL": 835.5,   # same datasheet, H200 NVL: 1,671 with sparsity
    "A100": 312.0,       # A100 datasheet: BF16 Tensor Core 312 (624 with sparsity), PCIe and SXM alike
    "A10": 125.0,        # A10 datasheet: BF16 Tensor Core 125 (250 with sparsity)
    "A10G": None,        # AWS's A10 variant has no NVIDIA datasheet; not the A10's figure: give --peak-tflops
    "L40S": 362.05,      # L40S datasheet: BF16 Tensor Core 362.05 (733 with sparsity)
    "L40": 181.05,       # L40 datasheet: BF16 Tensor Core 181.05 (362.1 with sparsity)
    "L4": 121.0,         # L4 datasheet: FP16/BF16 Tensor Core 242 with sparsity
    "V100": 125.0,       # V100 datasheet, SXM2: Tensor Performance 125 (fp16; Volta has no bf16)
    "V100-PCIE": 112.0,  # same datasheet, PCIe: 112
    "V100S": 130.0,      # V100S datasheet: Tensor Performance 130
    "T4": 65.0,          # T4 datasheet: Mixed Precision (FP16/FP32) 65
}


def table_peak_tflops(device_name: str) -> Optional[float]:
    """PEAK_TFLOPS's figure for a GPU named ``device_name`` (the longest key it contains); None if unknown."""
    keys = sorted((key for key in PEAK_TFLOPS if key in device_name), key=len, reverse=True)
    return PEAK_TFLOPS[keys[0]] if keys else None


def device_peak_tflops(given: Optional[float], device: torch.device) -> tuple[Optional[float], str]:
    """The peak MFU is measured against and where it comes from: ``given`` (--peak-tflops), else the table's
    figure for a CUDA device; (None, why) on a CPU or an unknown GPU."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, f"no MFU on {device.type} (give --peak-tflops for one)"
    name = torch.cuda.get_device_name(device)
    peak = table_peak_tflops(name)
    return peak, (f"the {name} table figure" if peak else f"no MFU: the peak of {name} is not known (give "
                                                           "--peak-tflops)")


class Speedometer:
    """Counts each micro-batch's model FLOPs on the host; turns a window's sum into a row's speed fields."""

    def __init__(self, cfg: ModelConfig, peak_tflops: Optional[float], device: torch.device, world: int):
        self.cfg, self.world = cfg, world
        self.peak_tflops, source = device_peak_tflops(peak_tflops, device)
        peak = f"MFU against {self.peak_tflops:g} TFLOP/s per device ({source})" if self.peak_tflops else source
        log.info("training rows report model TFLOP/s per rank; %s", peak)

    def flops(self, batch: Batch) -> float:
        """Model FLOPs of the update's share this micro-batch is. A batch without lengths on the host
        (built by hand, not by collate) counts its padded [batch, time] shape as full rows."""
        if batch.src_lengths is None or batch.tgt_lengths is None:
            return training_flops(self.cfg, len(batch), batch.src_tokens.size(1), batch.tgt_input.size(1))
        return batch_training_flops(self.cfg, batch.src_lengths, batch.tgt_lengths)

    def fields(self, flops: float, seconds: float) -> dict:
        """``tflops_per_rank`` and, with a known peak, ``mfu``, of ``flops`` done by all ranks in ``seconds``."""
        per_rank = flops / self.world / max(seconds, 1e-9) / 1e12
        return {"tflops_per_rank": per_rank, **({"mfu": per_rank / self.peak_tflops} if self.peak_tflops else {})}
