"""A real batch of the synthetic corpus, and a plain export run on stock torch.nn layers built here: the
reference that exported models' logits are checked against (tests/test_convert.py, tests/test_omega_init.py)."""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from admin_ds.data import ParallelDataset
from admin_ds.inference.beam import make_batch


def real_batch(data: Path, count: int = 6):
    """Sentences of the synthetic valid split in one right-padded batch (src + EOS, BOS + tgt)."""
    dataset = ParallelDataset.load(data, "valid")
    pairs = [dataset[i] for i in range(count)]
    src = make_batch([list(map(int, s)) + [3] for s, _ in pairs], pad_id=0)
    tgt = make_batch([[2] + list(map(int, t)) for _, t in pairs], pad_id=0)
    assert src.eq(0).any() and tgt.eq(0).any(), "the batch should hold padding"
    return src, tgt


def stock_logits(export: Path, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """A plain export run on torch.nn.TransformerEncoderLayer / DecoderLayer built here, keys loaded strictly."""
    cfg = json.loads((export / "config.json").read_text())
    state = load_file(str(export / "model.safetensors"))
    used = set()

    def take(prefix):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        used.update(prefix + k for k in part)
        return part

    args = dict(d_model=cfg["d_model"], nhead=cfg["nhead"], dim_feedforward=cfg["dim_feedforward"], dropout=0.0,
                activation="relu", layer_norm_eps=cfg["layer_norm_eps"], batch_first=True,
                norm_first=bool(cfg.get("norm_first")))
    encoder = nn.ModuleList(nn.TransformerEncoderLayer(**args) for _ in range(cfg["num_encoder_layers"]))
    decoder = nn.ModuleList(nn.TransformerDecoderLayer(**args) for _ in range(cfg["num_decoder_layers"]))
    encoder.load_state_dict(take("encoder.layers."), strict=True)
    decoder.load_state_dict(take("decoder.layers."), strict=True)
    encoder.eval(), decoder.eval()
    d, eps = cfg["d_model"], cfg["layer_norm_eps"]
    with torch.no_grad():
        pad = src.eq(cfg["pad_id"])
        x = cfg["embed_scale"] * state["src_embed.weight"][src] + state["src_pos"][: src.size(1)]
        for layer in encoder:
            x = layer(x, src_key_padding_mask=pad)
        if cfg.get("norm_first"):
            norm = take("encoder.norm.")
            x = F.layer_norm(x, (d,), norm["weight"], norm["bias"], eps)
        y = cfg["embed_scale"] * state["tgt_embed.weight"][tgt] + state["tgt_pos"][: tgt.size(1)]
        causal = torch.ones(tgt.size(1), tgt.size(1), dtype=torch.bool).triu(1)
        for layer in decoder:
            y = layer(y, x, tgt_mask=causal, memory_key_padding_mask=pad)
        if cfg.get("norm_first"):
            norm = take("decoder.norm.")
            y = F.layer_norm(y, (d,), norm["weight"], norm["bias"], eps)
        logits = y @ state["output_proj.weight"].T
    used.update(["src_embed.weight", "tgt_embed.weight", "src_pos", "tgt_pos", "output_proj.weight"])
    assert used == set(state), f"keys the stock model did not use: {sorted(set(state) - used)}"
    return logits
