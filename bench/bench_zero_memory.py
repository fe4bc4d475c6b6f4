"""Per-rank optimizer-state bytes with 2 ranks at ZeRO 0, 1, 2, 3.

    torchrun --nproc_per_node 2 -m bench.bench_zero_memory

Counts, per rank, the bytes of every tensor the optimizer holds for training: Adam's moments and the fp32
master weights where they are separate from the model's weights. Measured in bf16 (the mixed-precision
setting where ZeRO-0 also keeps fp32 masters, as in the ZeRO paper's 12 bytes per parameter) and in fp32
(masters are the weights themselves at ZeRO-0). Model: admin 6-6 d=256, vocabulary 8000, one step (the
product's ``train_step``) taken so that every state exists.
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from admin_ds.model import build_model
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env
from bench.tensor_batch import tensor_batch


def optimizer_bytes(engine) -> tuple[int, int]:
    """(moment bytes, separate fp32 master bytes) held by this rank's optimizer."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    seen, moments, masters = set(), 0, 0
    for state in inner.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.data_ptr() not in seen and value.numel() > 1:
                seen.add(value.data_ptr())
                moments += value.numel() * value.element_size()
    model_ptrs = {p.data_ptr() for p in engine.module.parameters()}
    # Where each DeepSpeed optimizer keeps its fp32 masters (ZeRO-3 swaps them out of the inner
    # optimizer's param_groups between steps, so those alone would miss them).
    candidates = [param for group in inner.param_groups for param in group["params"]]
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        candidates += [t for t in getattr(engine.optimizer, name, None) or [] if torch.is_tensor(t)]
    for param in candidates:
        if param.numel() and param.data_ptr() not in model_ptrs and param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            masters += param.numel() * param.element_size()
    return moments, masters


def main() -> int:
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    rank, world, _ = training_engine.init_distributed()
    results = []
    for precision in ("bf16", "fp32"):
        for stage in (0, 1, 2, 3):
            config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
                      "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "torch_adam": True}},
                      "bf16": {"enabled": precision == "bf16"}}
            torch.manual_seed(0)
            model = build_model("admin-6-6", d_model=256, nhead=4, ffn_dim=1024, src_vocab_size=8000,
                                tgt_vocab_size=8000)
            params = sum(p.numel() for p in model.parameters())
            engine = training_engine.initialize(model, config)
            src = torch.randint(4, 8000, (8, 16))
            training_engine.train_step(engine, tensor_batch(src, src, src), label_smoothing=0.1)
            moments, masters = optimizer_bytes(engine)
            totals = torch.tensor([moments, masters], dtype=torch.float64)
            gathered = [torch.zeros_like(totals) for _ in range(world)]
            dist.all_gather(gathered, totals)
            results.append({"precision": precision, "stage": stage, "params": params,
                            "per_rank": [t.tolist() for t in gathered]})
            engine.destroy()
    if rank == 0:
        for precision in ("bf16", "fp32"):
            rows = [r for r in results if r["precision"] == precision]
            base = max(sum(rank_bytes) for rank_bytes in rows[0]["per_rank"])
            print(f"{precision}: {rows[0]['params']:,} parameters")
            for row in rows:
                worst = max(row["per_rank"], key=sum)
                print(f"  ZeRO-{row['stage']}: moments {worst[0] / 2**20:7.1f} MiB + fp32 masters "
                      f"{worst[1] / 2**20:7.1f} MiB per rank = {sum(worst) / base:.3f}x of ZeRO-0")
        print(json.dumps(results))
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
