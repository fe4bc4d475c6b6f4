"""Run Admin's rank-0 hook under a real launcher and dump what each rank sees (used by test_hook.py).

    deepspeed --num_gpus 2 tests/scripts/hook_check.py --cases 0/fp32,3i/fp32,2/bf16 --out DIR

Each case is STAGE[i]/PRECISION ("i": ZeRO-3 with zero.Init); all cases share one launch, since the
launcher and imports cost more than the checks. Writes DIR/CASE-rankR.json.
"""

import argparse
import json
import os

import torch

from admin_ds.model import build_model
from admin_ds.training import engine as training_engine
from admin_ds.training.rendezvous import fill_rendezvous_env

MODEL = dict(encoder_layers=3, decoder_layers=2, d_model=32, nhead=4, ffn_dim=64, src_vocab_size=50,
             tgt_vocab_size=50)


def batch_for(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    src = torch.randint(4, 50, (4, 7), generator=gen)
    tgt = torch.randint(4, 50, (4, 6), generator=gen)
    src[0, 5:] = 0  # some padding, as real batches have
    return src, tgt


def run_case(stage: int, zero_init: bool, precision: str, device: torch.device) -> dict:
    zero = {"stage": stage}
    if stage == 3:  # partition even admin-tiny's small tensors (ω included): DeepSpeed keeps < 100k whole
        zero["stage3_param_persistence_threshold"] = 0
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero,
              "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
              "bf16": {"enabled": precision == "bf16"}}
    torch.manual_seed(0)  # identical initial weights on every rank, and in the reference process
    with training_engine.model_init_context(config, zero_init):
        model = build_model("admin-tiny", dropout=0.0, **MODEL)
    engine = training_engine.initialize(model, config)
    src, tgt = batch_for(torch.distributed.get_rank())
    profile = training_engine.omega_hook(engine, src.to(device), tgt.to(device), dropout=False)
    omegas = [r.omega for s in ("encoder", "decoder") for r in engine.module.residuals(s)]
    # Under ZeRO-3 each rank must hold only its shard of ω, or the gather/scatter path went untested.
    partitioned = all(p.ds_tensor.numel() < p.ds_numel for p in omegas) if stage == 3 else None
    master_before = [float(training_engine.full_parameter(engine, p).mean()) for p in omegas]
    spread_before = [float(training_engine.full_parameter(engine, p).std()) for p in omegas]
    logits = engine(src.to(device), tgt.to(device))
    loss = logits.float().logsumexp(-1).mean()
    engine.backward(loss)
    engine.step()
    master_after = [float(training_engine.full_parameter(engine, p).mean()) for p in omegas]
    engine.destroy()
    return dict(profile=profile.encoder + profile.decoder, partitioned=partitioned, master_before=master_before,
                spread_before=spread_before, master_after=master_after)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    os.environ.update(fill_rendezvous_env(os.environ))  # an entry point: it fills the rendezvous
    rank, world, device = training_engine.init_distributed()
    for case in args.cases.split(","):
        stage, precision = case.split("/")
        result = run_case(int(stage.rstrip("i")), stage.endswith("i"), precision, device)
        with open(f"{args.out}/{case.replace('/', '-')}-rank{rank}.json", "w") as f:
            json.dump(dict(result, rank=rank, world=world), f)
    training_engine.finish_distributed()
    return 0


if __name__ == "__main__":
    training_engine.exit_skipping_finalization(main())
