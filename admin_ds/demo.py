"""``admin-ds demo``: the whole flow on a built-in corpus, with no network and no arguments.

    write a toy parallel corpus -> prepare (sentencepiece + binarise) -> train an Admin model with
    DeepSpeed (ω from the rank-0 hook) -> translate the test set and score BLEU/chrF with sacrebleu ->
    convert to a plain PyTorch Post-LN model

``--data DIR`` runs the same flow on a real corpus: DIR holds train/valid/test files named
``SPLIT.LANG`` (e.g. ../shared/data/tatoeba-de-en with --source-lang de --target-lang en).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from admin_ds.errors import UserError

log = logging.getLogger("admin_ds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="admin-ds-demo", help="where every output goes (default ./admin-ds-demo)")
    parser.add_argument("--data", help="a folder of real parallel text (train/valid/test.LANG) instead of the toy corpus")
    parser.add_argument("--source-lang", default="src", help="with --data: source language suffix")
    parser.add_argument("--target-lang", default="tgt", help="with --data: target language suffix")
    parser.add_argument("--arch", default="admin-demo", help="model preset (default admin-demo: 6-6, d=128)")
    parser.add_argument("--vocab-size", type=int, default=1000, help="sentencepiece vocabulary (joint)")
    parser.add_argument("--max-steps", type=int, default=500, help="training updates (about 0.8 s each on 2 CPU cores)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="tokens per batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-updates", type=int, default=200)
    parser.add_argument("--test-lines", type=int, default=500, help="translate at most this many test lines")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="replace an existing --workdir")


def _step(number: int, text: str) -> float:
    print(f"[{number}/5] {text}", flush=True)
    return time.perf_counter()


def _raw_prefixes(args: argparse.Namespace, workdir: Path) -> dict[str, Path]:
    if args.data is None:
        from admin_ds.data import write_synthetic_corpus

        return write_synthetic_corpus(workdir / "text")
    data = Path(args.data)
    prefixes = {split: data / split for split in ("train", "valid", "test")}
    if not (data / f"valid.{args.source_lang}").exists() and (data / f"dev.{args.source_lang}").exists():
        prefixes["valid"] = data / "dev"
    for split, prefix in prefixes.items():
        for lang in (args.source_lang, args.target_lang):
            if not Path(f"{prefix}.{lang}").is_file():
                raise UserError(f"--data: missing {prefix}.{lang}")
    return prefixes


def main(args: argparse.Namespace) -> int:
    from admin_ds import load_model, train
    from admin_ds.convert import convert
    from admin_ds.data import PrepareConfig, Tokenizer, prepare
    from admin_ds.evaluate import score
    from admin_ds.translate import translate_lines

    workdir = Path(args.workdir)
    if workdir.exists():
        if not args.force:
            raise UserError(f"{workdir} exists; pass --force to replace it or --workdir to choose another")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    start = time.perf_counter()
    source_lang, target_lang = (args.source_lang, args.target_lang)

    t = _step(1, "corpus and sentencepiece")
    prefixes = _raw_prefixes(args, workdir)
    data_dir = workdir / "data"
    meta = prepare(PrepareConfig(train_prefix=prefixes["train"], valid_prefix=prefixes["valid"],
                                 test_prefix=prefixes["test"], source_lang=source_lang, target_lang=target_lang,
                                 out_dir=data_dir, vocab_size=args.vocab_size))
    print(f"      {data_dir} ({time.perf_counter() - t:.0f} s)")

    t = _step(2, f"train {args.arch} with DeepSpeed for {args.max_steps} updates (ω from the rank-0 hook)")
    save_dir = workdir / "run"
    train_args = train.build_parser().parse_args([
        "--data", str(data_dir), "--save-dir", str(save_dir), "--arch", args.arch,
        "--max-steps", str(args.max_steps), "--max-tokens", str(args.max_tokens), "--lr", str(args.lr),
        "--warmup-updates", str(args.warmup_updates), "--save-interval", str(args.max_steps),
        "--validate-interval", str(max(args.max_steps // 4, 1)), "--log-interval", "50", "--no-tensorboard"])
    train.main(train_args)
    print(f"      {save_dir} ({time.perf_counter() - t:.0f} s)")

    t = _step(3, f"translate {args.test_lines} test sentences (beam {args.beam}) and score with sacrebleu")
    sources = Path(f"{prefixes['test']}.{source_lang}").read_text(encoding="utf-8").splitlines()[: args.test_lines]
    references = Path(f"{prefixes['test']}.{target_lang}").read_text(encoding="utf-8").splitlines()[: args.test_lines]
    model = load_model(save_dir)
    tokenizer = Tokenizer(data_dir / json.loads((data_dir / "meta.json").read_text())["spm_model"]["src"])
    hypotheses = translate_lines(model, tokenizer, sources, beam=args.beam)
    (workdir / "test.hyp").write_text("".join(line + "\n" for line in hypotheses), encoding="utf-8")
    result = score(hypotheses, references)
    (workdir / "test_scores.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"      BLEU {result['bleu']:.2f}, chrF {result['chrf']:.2f} ({time.perf_counter() - t:.0f} s)")

    t = _step(4, "convert to a plain PyTorch Post-LN model (ω folded into the weights)")
    plain_dir = convert(save_dir, workdir / "plain", plain=True)
    print(f"      {plain_dir} ({time.perf_counter() - t:.0f} s)")

    _step(5, f"done in {time.perf_counter() - start:.0f} s")
    print(f"""
outputs:
  corpus and sentencepiece  {data_dir}  ({sum(s['examples'] for s in meta['splits'].values())} pairs)
  DeepSpeed checkpoints     {save_dir}/global_step{args.max_steps}  (metrics.jsonl, omega.profile)
  translations              {workdir / 'test.hyp'}
  scores                    {workdir / 'test_scores.json'}
  plain PyTorch model       {plain_dir}  (load with admin_ds/plain.py: torch + safetensors only)

test BLEU {result['bleu']:.2f}  ({result['signature']})""")
    return 0
