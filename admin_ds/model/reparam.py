"""Admin -> plain Post-LN: fold every shortcut scale into the weights around it (docs/admin.md, the reparameterisation).

A Post-LN sublayer with a shortcut scale s_i (Admin's vector ω_i, DeepNorm's constant α, 1 for Post-LN)

    x_i = LN_i(s_i ⊙ x_{i-1} + f_i(x_{i-1}))

equals a plain one on the rescaled stream x'_{i-1} = s_i ⊙ x_{i-1}:

    x_i = LN_i(x'_{i-1} + f'_i(x'_{i-1})),   f'_i(x') = f_i(x' / s_i)

so s_i moves into whatever produced x_{i-1} (the previous LayerNorm's weight and bias, or for the first
sublayer of a stack the embedding and position tables), and 1/s_i moves column-wise into the projections
of f_i that read the stream (W_q, W_k, W_v of self-attention; W_q of cross-attention, whose keys and
values read the encoder output; W_1 of the FFN). The last LayerNorm of each stack keeps its scale, so the
encoder output and the decoder features are unchanged.

The second half maps a Post-LN or Pre-LN TranslationModel onto the keys of torch.nn.TransformerEncoder /
TransformerDecoder (docs/contracts.md, the plain export) and back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from typing import Optional

import torch
from torch import nn

from admin_ds.errors import UserError
from admin_ds.model import ModelConfig, TranslationModel
from admin_ds.model.layers import DecoderLayer, EncoderLayer
from admin_ds.model.residual import Residual

PLAIN_FORMAT = "admin-ds-plain"


# --- folding --------------------------------------------------------------------------------------------
def stream_readers(layer: nn.Module) -> list[tuple[Residual, list[nn.Linear]]]:
    """A layer's sublayers in order: (residual, the projections of its branch that read the stream)."""
    if isinstance(layer, EncoderLayer):
        return [(layer.self_attn_residual, [layer.self_attn.qkv_proj]), (layer.ffn_residual, [layer.ffn.fc1])]
    if isinstance(layer, DecoderLayer):
        return [(layer.self_attn_residual, [layer.self_attn.qkv_proj]),
                (layer.cross_attn_residual, [layer.cross_attn.q_proj]),
                (layer.ffn_residual, [layer.ffn.fc1])]
    raise TypeError(f"not an encoder or decoder layer: {type(layer).__name__}")


def shortcut_scale(residual: Residual) -> Optional[torch.Tensor]:
    """The shortcut's scale as a [D] vector (ω, or α filled in), or None where it is exactly 1."""
    if residual.omega is not None:
        return residual.omega.detach().float()
    if residual.alpha != 1.0:
        return torch.full((residual.norm.normalized_shape[0],), float(residual.alpha))
    return None


@torch.no_grad()
def fold_shortcut_scales(model: TranslationModel) -> TranslationModel:
    """Turn an Admin, DeepNorm or Post-LN model into an equivalent plain Post-LN one, in place.

    Afterwards every shortcut scale is 1 and ``model.cfg.residual == "post-ln"``; the source and target
    tables are untied from each other and from the output projection (which keeps the original target
    table), and the position buffers carry ω_1 (so they are no longer the sinusoidal defaults).
    Returns ``model``. Pre-LN models have nothing to fold and are refused.
    """
    if model.cfg.residual == "pre-ln":
        raise UserError("a Pre-LN model has no shortcut scales to fold")
    for stack, embed in (("encoder", model.src_embed), ("decoder", model.tgt_embed)):
        layers = model.encoder.layers if stack == "encoder" else model.decoder.layers
        sublayers = [entry for layer in layers for entry in stream_readers(layer)]
        for i, (residual, readers) in enumerate(sublayers):
            scale = shortcut_scale(residual)
            if scale is not None:
                if i == 0:  # x_0 = sqrt(D) * table[tokens] + positions: scale both tables' columns
                    table = embed.table.weight.detach().float()
                    embed.table = nn.Embedding(table.size(0), table.size(1), padding_idx=embed.table.padding_idx,
                                               _weight=table * scale)  # a new tensor: untied from the rest
                    embed.positions.mul_(scale.to(embed.positions.dtype))
                else:
                    previous = sublayers[i - 1][0].norm
                    previous.weight.mul_(scale)
                    previous.bias.mul_(scale)
                for linear in readers:
                    linear.weight.div_(scale)  # [out, D] / [D]: column j carries 1 / s_j
            residual.omega = None
            residual.alpha = 1.0
    if model.cfg.share_all_embeddings or model.cfg.share_decoder_input_output_embed:
        # Untie what the folding left tied (a Post-LN model has no scale to untie its tables with).
        for embed in (model.src_embed, model.tgt_embed):
            if embed.table.weight is model.output_proj.weight or (
                    embed is model.tgt_embed and embed.table is model.src_embed.table):
                weight = embed.table.weight.detach()
                embed.table = nn.Embedding(weight.size(0), weight.size(1), padding_idx=embed.table.padding_idx,
                                           _weight=weight.clone())
    model.cfg = dataclasses.replace(model.cfg, residual="post-ln", share_all_embeddings=False,
                                    share_decoder_input_output_embed=False)
    return model


# --- the torch.nn layout ---------------------------------------------------------------------------------
# (plain key inside a layer, our key inside a layer); multihead_attn.in_proj_* is cat(q_proj, kv_proj).
_ATTENTION = [("in_proj_weight", "qkv_proj.weight"), ("in_proj_bias", "qkv_proj.bias"),
              ("out_proj.weight", "out_proj.weight"), ("out_proj.bias", "out_proj.bias")]
_FFN = [("linear1.weight", "ffn.fc1.weight"), ("linear1.bias", "ffn.fc1.bias"),
        ("linear2.weight", "ffn.fc2.weight"), ("linear2.bias", "ffn.fc2.bias")]
_NORMS = {"norm1": "self_attn_residual.norm", "norm2": "ffn_residual.norm"}
_DECODER_NORMS = {"norm1": "self_attn_residual.norm", "norm2": "cross_attn_residual.norm", "norm3": "ffn_residual.norm"}
ENCODER_LAYER_KEYS = ([(f"self_attn.{a}", f"self_attn.{b}") for a, b in _ATTENTION] + _FFN +
                      [(f"{plain}.{p}", f"{ours}.{p}") for plain, ours in _NORMS.items() for p in ("weight", "bias")])
DECODER_LAYER_KEYS = ([(f"self_attn.{a}", f"self_attn.{b}") for a, b in _ATTENTION] +
                      [(f"multihead_attn.{a}", f"cross_attn.{b}") for a, b in _ATTENTION[2:]] + _FFN +
                      [(f"{plain}.{p}", f"{ours}.{p}") for plain, ours in _DECODER_NORMS.items()
                       for p in ("weight", "bias")])


def plain_config(cfg: ModelConfig) -> dict:
    """config.json of a plain export (contract 4) for a Post-LN or Pre-LN model config."""
    if cfg.residual not in ("post-ln", "pre-ln"):
        raise UserError(f"fold the shortcut scales of a {cfg.residual} model first")
    return {"format": PLAIN_FORMAT, "d_model": cfg.d_model, "nhead": cfg.nhead, "dim_feedforward": cfg.ffn_dim,
            "num_encoder_layers": cfg.encoder_layers, "num_decoder_layers": cfg.decoder_layers,
            "layer_norm_eps": cfg.layer_norm_eps, "src_vocab_size": cfg.src_vocab_size,
            "tgt_vocab_size": cfg.tgt_vocab_size, "max_positions": cfg.max_positions,
            "embed_scale": math.sqrt(cfg.d_model), "pad_id": cfg.pad_id, "bos_id": cfg.bos_id, "eos_id": cfg.eos_id,
            "norm_first": cfg.residual == "pre-ln", "activation": "relu"}


def plain_tensors(model: TranslationModel) -> Iterator[tuple[str, torch.Tensor]]:
    """(plain key, tensor) for a Post-LN or Pre-LN model; views of its weights except the packed cross-
    attention input projection. Pre-LN adds ``encoder.norm.*`` and ``decoder.norm.*``."""
    plain_config(model.cfg)
    yield "src_embed.weight", model.src_embed.table.weight
    yield "tgt_embed.weight", model.tgt_embed.table.weight
    yield "src_pos", model.src_embed.positions
    yield "tgt_pos", model.tgt_embed.positions
    for stack, keys in (("encoder", ENCODER_LAYER_KEYS), ("decoder", DECODER_LAYER_KEYS)):
        for i, layer in enumerate(getattr(model, stack).layers):
            for plain, ours in keys:
                yield f"{stack}.layers.{i}.{plain}", layer.get_parameter(ours)
            if stack == "decoder":
                cross = layer.cross_attn
                yield f"decoder.layers.{i}.multihead_attn.in_proj_weight", torch.cat([cross.q_proj.weight,
                                                                                     cross.kv_proj.weight])
                yield f"decoder.layers.{i}.multihead_attn.in_proj_bias", torch.cat([cross.q_proj.bias,
                                                                                   cross.kv_proj.bias])
        norm = getattr(model, stack).norm
        if norm is not None:
            yield f"{stack}.norm.weight", norm.weight
            yield f"{stack}.norm.bias", norm.bias
    yield "output_proj.weight", model.output_proj.weight
    if model.output_proj.bias is not None:
        yield "output_proj.bias", model.output_proj.bias


def to_plain(model: TranslationModel, inplace: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, state dict) of the plain export of ``model`` (docs/contracts.md, the plain export).

    Admin / DeepNorm / Post-LN models come out as plain Post-LN; Pre-LN ones with ``norm_first`` and the
    final LayerNorms. ``inplace=True`` folds ``model`` itself (saving a copy of the weights).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model = model.float()
    if model.cfg.residual != "pre-ln":
        fold_shortcut_scales(model)
    return plain_config(model.cfg), {key: tensor.detach() for key, tensor in plain_tensors(model)}


# --- and back --------------------------------------------------------------------------------------------
def config_from_plain(config: dict, source: str) -> tuple[ModelConfig, float]:
    """A ModelConfig (Post-LN, or Pre-LN with norm_first) for a plain export, and its embed_scale."""
    try:
        cfg = ModelConfig(encoder_layers=config["num_encoder_layers"], decoder_layers=config["num_decoder_layers"],
                          d_model=config["d_model"], nhead=config["nhead"], ffn_dim=config["dim_feedforward"],
                          residual="pre-ln" if config.get("norm_first") else "post-ln", dropout=0.0,
                          src_vocab_size=config["src_vocab_size"], tgt_vocab_size=config["tgt_vocab_size"],
                          share_all_embeddings=False, share_decoder_input_output_embed=False,
                          max_positions=config["max_positions"], layer_norm_eps=config["layer_norm_eps"],
                          pad_id=config["pad_id"], bos_id=config["bos_id"], eos_id=config["eos_id"])
        embed_scale = float(config["embed_scale"])
    except KeyError as err:
        raise UserError(f"{source}: plain export config lacks {err.args[0]!r}") from None
    if config.get("activation", "relu") != "relu":
        raise UserError(f"{source}: only ReLU plain models load, not {config['activation']!r}")
    return cfg.validate(), embed_scale


def model_targets(model: TranslationModel, plain_key: str) -> list[tuple[torch.Tensor, int, int]]:
    """Where a plain tensor goes in a freshly built Post-LN/Pre-LN model: (tensor, first row, end row)."""
    parts = plain_key.split(".")
    if plain_key in ("src_embed.weight", "tgt_embed.weight"):
        weight = getattr(model, parts[0]).table.weight
        return [(weight, 0, weight.size(0))]
    if plain_key in ("src_pos", "tgt_pos"):
        positions = (model.src_embed if plain_key == "src_pos" else model.tgt_embed).positions
        return [(positions, 0, positions.size(0))]
    if plain_key == "output_proj.weight":
        return [(model.output_proj.weight, 0, model.output_proj.weight.size(0))]
    if len(parts) == 3 and parts[0] in ("encoder", "decoder") and parts[1] == "norm":
        norm = getattr(model, parts[0]).norm
        if norm is not None:
            return [(getattr(norm, parts[2]), 0, model.cfg.d_model)]
    if len(parts) > 3 and parts[0] in ("encoder", "decoder") and parts[1] == "layers" and parts[2].isdigit():
        layers = getattr(model, parts[0]).layers
        index, inner = int(parts[2]), ".".join(parts[3:])
        if index < len(layers):
            layer = layers[index]
            if parts[0] == "decoder" and inner.startswith("multihead_attn.in_proj_"):
                kind = inner[len("multihead_attn.in_proj_"):]
                d = model.cfg.d_model
                return [(getattr(layer.cross_attn.q_proj, kind), 0, d),
                        (getattr(layer.cross_attn.kv_proj, kind), d, 3 * d)]
            keys = dict(ENCODER_LAYER_KEYS if parts[0] == "encoder" else DECODER_LAYER_KEYS)
            if inner in keys:
                param = layer.get_parameter(keys[inner])
                return [(param, 0, param.size(0))]
    return []
