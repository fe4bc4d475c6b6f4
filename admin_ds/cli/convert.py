"""``admin-ds convert CKPT OUT``: a training checkpoint (or any model) as safetensors, as a plain Post-LN model,
as a CTranslate2 model or as a 🤗 transformers model.

    admin-ds convert runs/exp export/              # fp32 export: loadable by admin_ds.load_model
    admin-ds convert runs/exp plain/ --plain       # torch.nn layers + torch + safetensors only (plain.py)
    admin-ds convert runs/exp ct2/ --format ctranslate2 --quantization int8   # docs/deploy.md
    admin-ds convert runs/exp hf/ --format hf      # transformers: AutoModelForSeq2SeqLM, pipeline("translation")
    admin-ds convert runs/exp/global_step800 out/ --force
    admin-ds convert fp32/pytorch_model.bin out/ --config runs/exp/train_config.json

See ``admin_ds.checkpoints.convert`` for what is read and how.
"""

from __future__ import annotations

import argparse

from admin_ds.checkpoints.convert import FORMATS, convert
from admin_ds.checkpoints.ctranslate2_export import QUANTIZATIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="DeepSpeed save dir or global_stepN dir, an export, or a zero_to_fp32 state dict")
    parser.add_argument("out", metavar="OUT", help="output directory (config.json + model.safetensors)")
    parser.add_argument("--tag", help="DeepSpeed checkpoint tag (default: the one named in 'latest')")
    parser.add_argument("--plain", action="store_true",
                        help="fold ω into the weights: a plain Post-LN model for torch.nn layers (see plain.py)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="fp32 (default), plain (= --plain), ctranslate2 (a folded model for the "
                             "CTranslate2 engine) or hf (a folded model 🤗 transformers loads; docs/deploy.md)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help="with --format ctranslate2: weight type (default: float32)")
    parser.add_argument("--evaluation", metavar="FILE", default=None,
                        help="with --format hf: the JSON of admin-ds evaluate --output, whose BLEU goes into the "
                             "model card (default: none, the card says BLEU was not measured)")
    parser.add_argument("--config", help="model config (train_config.json or an export's config.json) for a "
                                         "bare state dict file")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def main(args: argparse.Namespace) -> int:
    out = convert(args.checkpoint, args.out, tag=args.tag, plain=args.plain, force=args.force, config=args.config,
                  format=args.format, quantization=args.quantization, evaluation=args.evaluation)
    kinds = {"plain": "plain export", "ctranslate2": "CTranslate2 model", "hf": "transformers model"}
    kind = kinds.get(args.format or "", "fp32 export")
    print(f"wrote {'plain export' if args.plain else kind} {out}")
    return 0
