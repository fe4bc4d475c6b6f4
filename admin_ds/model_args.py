"""Model and data flags shared by ``profile``, ``train`` and ``demo`` (design.md contract 1)."""

from __future__ import annotations

import argparse

from admin_ds.model import PRESETS, RESIDUAL_SCHEMES, ModelConfig, preset_config


def add_model_arguments(parser: argparse.ArgumentParser, default_arch: str = "admin-6-6") -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--arch", default=default_arch, help=f"preset: {', '.join(PRESETS)} (default {default_arch})")
    group.add_argument("--encoder-layers", type=int, help="number of encoder layers N")
    group.add_argument("--decoder-layers", type=int, help="number of decoder layers M")
    group.add_argument("--d-model", type=int, help="model width D")
    group.add_argument("--nhead", type=int, help="attention heads (must divide D)")
    group.add_argument("--ffn-dim", type=int, help="feed-forward inner width")
    group.add_argument("--residual", choices=RESIDUAL_SCHEMES, help="residual scheme (preset default: admin)")
    group.add_argument("--dropout", type=float, help="dropout on embeddings and residual branches")
    group.add_argument("--attention-dropout", type=float, help="dropout on attention probabilities")
    group.add_argument("--activation-dropout", type=float, help="dropout after the FFN's ReLU")
    group.add_argument("--max-positions", type=int, help="longest sequence the position table covers")
    group.add_argument("--checkpoint-activations", type=int, metavar="K", dest="checkpoint_every",
                       help="recompute every run of K layers in backward (activation checkpointing; 0 = off)")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", required=required, help="a directory written by `admin-ds prepare`")
    group.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch and rank, padding included")
    group.add_argument("--seed", type=int, default=1, help="seed for initialisation, dropout and batch order")


def model_config_from_args(args: argparse.Namespace, data_info=None) -> ModelConfig:
    """The preset, then the vocabulary of the prepared data, then explicit flags, validated."""
    overrides = {name: getattr(args, name, None) for name in (
        "encoder_layers", "decoder_layers", "d_model", "nhead", "ffn_dim", "residual", "dropout",
        "attention_dropout", "activation_dropout", "max_positions", "checkpoint_every")}
    if data_info is not None:
        overrides.update(src_vocab_size=data_info.src_vocab_size, tgt_vocab_size=data_info.tgt_vocab_size,
                         share_all_embeddings=data_info.joint_vocab, pad_id=data_info.pad_id,
                         bos_id=data_info.bos_id, eos_id=data_info.eos_id)
        if getattr(args, "max_positions", None) is None:
            overrides["max_positions"] = max(data_info.max_positions + 2, 8)
    return preset_config(args.arch, **overrides)
