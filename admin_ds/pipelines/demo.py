"""The whole flow on a built-in corpus (``admin-ds demo``), with no network and no arguments.

    write a toy parallel corpus -> prepare (sentencepiece + binarise) -> train an Admin model with
    DeepSpeed (ω from the rank-0 hook) -> translate the test set and score BLEU/chrF with sacrebleu ->
    convert to a plain PyTorch Post-LN model

``data`` runs the same flow on a real corpus: a folder with train/valid/test files named ``SPLIT.LANG``
(e.g. ../shared/data/tatoeba-de-en with source_lang de, target_lang en; ``dev`` stands in for ``valid``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from admin_ds.checkpoints.convert import write_converted
from admin_ds.checkpoints.load import load_model
from admin_ds.data import PrepareConfig, prepare, write_synthetic_corpus
from admin_ds.errors import UserError
from admin_ds.inference.scoring import score
from admin_ds.inference.translator import Translator
from admin_ds.io import write_json_atomic, write_text_atomic
from admin_ds.options import option
from admin_ds.training.config import DataConfig, FailureConfig, ModelChoice, TrainConfig
from admin_ds.training.loop import train


@dataclass
class DemoConfig:
    """What the demo runs; the defaults take about 6.5 minutes on 2 CPU cores."""

    workdir: str = option("admin-ds-demo", help="where every output goes")
    data: Optional[str] = option(None, help="a folder of real parallel text (train/valid/test.LANG) instead of "
                                            "the toy corpus")
    source_lang: str = option("src", help="with --data: source language suffix")
    target_lang: str = option("tgt", help="with --data: target language suffix")
    arch: str = option("admin-demo", help="model preset (admin-demo: 6-6, d=128)")
    vocab_size: int = option(1000, help="sentencepiece vocabulary (joint)")
    max_steps: int = option(500, help="training updates (about 0.8 s each on 2 CPU cores)")
    max_tokens: int = option(2048, help="tokens per batch")
    lr: float = option(2e-3, help="peak learning rate")
    warmup_updates: int = option(200, help="linear warm-up updates")
    test_lines: int = option(500, help="translate at most this many test lines")
    beam: int = option(5, help="beam size")
    force: bool = option(False, help="replace an existing --workdir")


def _step(number: int, text: str) -> float:
    print(f"[{number}/5] {text}", flush=True)
    return time.perf_counter()


def _real_prefixes(cfg: DemoConfig) -> dict[str, Path]:
    """The --data corpus's split prefixes, checked before anything is written."""
    data = Path(cfg.data)
    prefixes = {split: data / split for split in ("train", "valid", "test")}
    if not (data / f"valid.{cfg.source_lang}").exists() and (data / f"dev.{cfg.source_lang}").exists():
        prefixes["valid"] = data / "dev"
    for prefix in prefixes.values():
        for lang in (cfg.source_lang, cfg.target_lang):
            if not Path(f"{prefix}.{lang}").is_file():
                raise UserError(f"--data: missing {prefix}.{lang}")
    return prefixes


def _fresh_workdir(cfg: DemoConfig) -> Path:
    workdir = Path(cfg.workdir)
    if workdir.exists():
        if not cfg.force:
            raise UserError(f"{workdir} exists; pass --force to replace it or --workdir to choose another")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    return workdir


def _read_test(prefix: Path, lang: str, lines: int) -> list[str]:
    return Path(f"{prefix}.{lang}").read_text(encoding="utf-8").splitlines()[:lines]


def run_demo(cfg: DemoConfig) -> dict:
    """Run the five steps and print what each made; returns the test scores."""
    real = _real_prefixes(cfg) if cfg.data is not None else None
    workdir = _fresh_workdir(cfg)
    start = time.perf_counter()

    t = _step(1, "corpus and sentencepiece")
    prefixes = real or write_synthetic_corpus(workdir / "text")
    data_dir = workdir / "data"
    meta = prepare(PrepareConfig(train_prefix=prefixes["train"], valid_prefix=prefixes["valid"],
                                 test_prefix=prefixes["test"], source_lang=cfg.source_lang,
                                 target_lang=cfg.target_lang, out_dir=data_dir, vocab_size=cfg.vocab_size))
    print(f"      {data_dir} ({time.perf_counter() - t:.0f} s)")

    t = _step(2, f"train {cfg.arch} with DeepSpeed for {cfg.max_steps} updates (ω from the rank-0 hook)")
    save_dir = train(TrainConfig(save_dir=str(workdir / "run"), max_steps=cfg.max_steps, lr=cfg.lr,
                                 warmup_updates=cfg.warmup_updates, save_interval=cfg.max_steps,
                                 validate_interval=max(cfg.max_steps // 4, 1), log_interval=50,
                                 tensorboard=False),
                     DataConfig(data=str(data_dir), max_tokens=cfg.max_tokens), ModelChoice(cfg.arch),
                     failure=FailureConfig(stop_signals="none"))  # the demo never resumes: a signal just ends it
    print(f"      {save_dir} ({time.perf_counter() - t:.0f} s)")

    t = _step(3, f"translate {cfg.test_lines} test sentences (beam {cfg.beam}) and score with sacrebleu")
    translator = Translator(save_dir, beam=cfg.beam, data=str(data_dir), device="cpu")
    hypotheses = translator.translate(_read_test(prefixes["test"], cfg.source_lang, cfg.test_lines))
    write_text_atomic(workdir / "test.hyp", "".join(line + "\n" for line in hypotheses))
    result = score(hypotheses, _read_test(prefixes["test"], cfg.target_lang, cfg.test_lines))
    write_json_atomic(workdir / "test_scores.json", result)
    print(f"      BLEU {result['bleu']:.2f}, chrF {result['chrf']:.2f} ({time.perf_counter() - t:.0f} s)")

    t = _step(4, "convert to a plain PyTorch Post-LN model (ω folded into the weights)")
    plain_dir = write_converted(load_model(save_dir), save_dir, workdir / "plain", plain=True)
    print(f"      {plain_dir} ({time.perf_counter() - t:.0f} s)")

    _step(5, f"done in {time.perf_counter() - start:.0f} s")
    print(f"""
outputs:
  corpus and sentencepiece  {data_dir}  ({sum(s['examples'] for s in meta['splits'].values())} pairs)
  DeepSpeed checkpoints     {save_dir}/global_step{cfg.max_steps}  (metrics.jsonl, omega.profile)
  translations              {workdir / 'test.hyp'}
  scores                    {workdir / 'test_scores.json'}
  plain PyTorch model       {plain_dir}  (load with admin_ds/plain.py: torch + safetensors only)

test BLEU {result['bleu']:.2f}  ({result['signature']})""")
    return result
