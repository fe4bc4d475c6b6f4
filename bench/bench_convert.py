"""Peak memory of `admin-ds convert` on a 60-12 d=512 Admin checkpoint written by two ranks.

Trains admin-60-12 for one step with two CPU ranks (torchrun, ZeRO-2 or ZeRO-3) on the synthetic corpus,
then converts its checkpoint in fresh processes and reports each process's peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) against the size of one fp32 copy of the weights. "net" subtracts
the peak of a process that imports the same modules and converts nothing. The bound: one fp32
copy plus one shard, i.e. net / copy <= 1 + 1/world_size.
For comparison it also measures DeepSpeed's own get_fp32_state_dict_from_zero_checkpoint + load_state_dict,
and its lazy_mode with one tensor materialised and copied at a time.

    python -m bench.bench_convert                    # ZeRO-2, temporary folder (~5 GB of checkpoint)
    python -m bench.bench_convert --stage 3 --work WORK_DIR --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each measurement runs in a fresh interpreter: the peak RSS of a process only ever grows.
PROBE = """
import resource, sys, json, time
import torch, deepspeed, admin_ds.checkpoints.convert
mode, args = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
if mode == "convert":
    from admin_ds.cli import main
    assert main(["convert", *args]) == 0
elif mode == "deepspeed":
    # DeepSpeed's reader unpickles with weights_only=False: fine for the benchmark's own checkpoints only.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from admin_ds.checkpoints.exports import model_config_from_file
    from admin_ds.model import TranslationModel
    model = TranslationModel(model_config_from_file(args[1]))
    model.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(args[0]))
elif mode == "deepspeed-lazy":
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from admin_ds.checkpoints.exports import model_config_from_file
    from admin_ds.model import TranslationModel
    model = TranslationModel(model_config_from_file(args[1]))
    targets = model.state_dict(keep_vars=True)
    state = get_fp32_state_dict_from_zero_checkpoint(args[0], lazy_mode=True)
    with torch.no_grad():
        for name in list(state):  # materialise one tensor at a time, as lazy mode intends
            targets[name].copy_(state.pop(name).contiguous())
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.perf_counter() - start}))
"""


def env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def probe(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        raise SystemExit(f"probe {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train(work: Path, stage: int) -> Path:
    from admin_ds.data import PrepareConfig, prepare, write_synthetic_corpus

    data = work / "data"
    if not (data / "meta.json").is_file():
        prefixes = write_synthetic_corpus(work / "text", n_train=300, n_valid=20, n_test=20, seed=0)
        prepare(PrepareConfig(train_prefix=prefixes["train"], valid_prefix=prefixes["valid"],
                              test_prefix=prefixes["test"], source_lang="src", target_lang="tgt", out_dir=data,
                              vocab_size=200, workers=1, progress=False))
    save = work / f"save-zero{stage}"
    if (save / "latest").is_file():
        return save
    config = work / f"zero{stage}.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "admin_ds.train",
               "--data", str(data), "--arch", "admin-60-12", "--save-dir", str(save), "--max-steps", "1",
               "--max-tokens", "64", "--save-interval", "1", "--log-interval", "1", "--validate-interval", "0",
               "--no-tensorboard", "--deepspeed_config", str(config)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print(f"trained 1 step of admin-60-12 at ZeRO-{stage} on 2 ranks in {time.perf_counter() - start:.0f} s")
    return save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=2)
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_convert."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        save = train(work, args.stage)
        tag_dir = save / (save / "latest").read_text().strip()
        from admin_ds.model import ModelConfig, TranslationModel

        cfg = ModelConfig.from_dict(json.loads((save / "train_config.json").read_text())["model"])
        import torch

        with torch.device("meta"):  # count parameters without allocating them
            params = sum(p.numel() for p in TranslationModel(cfg).parameters())
        copy_mib = params * 4 / 2 ** 20
        shards = sorted(tag_dir.glob("*_optim_states.pt"))
        shard_mib = copy_mib / len(shards)
        on_disk = sum(f.stat().st_size for f in tag_dir.iterdir()) / 2 ** 20
        print(f"checkpoint {tag_dir.name}: {params / 1e6:.1f}M parameters, one fp32 copy {copy_mib:.0f} MiB, "
              f"{len(shards)} shards of {shard_mib:.0f} MiB fp32 weights, {on_disk:.0f} MiB on disk")
        # The import-only peak moves by tens of MiB when other work runs: the median of three.
        baseline = statistics.median(probe("baseline")["peak_kib"] for _ in range(3)) / 1024
        rows = [("imports only", {"peak_kib": baseline * 1024, "seconds": 0.0})]
        for label, argv in (("convert", ["convert", str(save), str(work / "out-fp32"), "--force"]),
                            ("convert --plain", ["convert", str(save), str(work / "out-plain"), "--plain", "--force"]),
                            ("deepspeed zero_to_fp32 + load_state_dict",
                             ["deepspeed", str(save), str(save / "train_config.json")]),
                            ("deepspeed zero_to_fp32 lazy_mode + copy_",
                             ["deepspeed-lazy", str(save), str(save / "train_config.json")])):
            rows.append((label, probe(*argv)))
        print(f"\n{'process':42s} {'peak RSS':>10s} {'net':>10s} {'net/copy':>9s} {'time':>7s}")
        for label, row in rows:
            peak = row["peak_kib"] / 1024
            net = peak - baseline
            print(f"{label:42s} {peak:8.0f} M {net:8.0f} M {net / copy_mib:9.2f} {row['seconds']:6.1f}s")
        print(f"\nbound: one copy + one shard = {(copy_mib + shard_mib) / copy_mib:.2f} copies")
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
