"""A plain export of admin-ds (``admin-ds convert CKPT OUT --plain``) on stock torch.nn layers.

This file imports only torch and safetensors: copy it anywhere.

    python plain.py EXPORT_DIR                     # config summary + greedy output for a built-in source
    python plain.py EXPORT_DIR --ids "17 42 5 3"   # greedy output ids for these source ids

    from plain import load_plain, greedy
    model = load_plain("EXPORT_DIR")                # eval mode, fp32, CPU
    logits = model(src_tokens, tgt_tokens)          # [B, S], [B, T] right-padded LongTensors -> [B, T, V]
    ids = greedy(model, [17, 42, 5, 3])             # source ids ending with EOS -> output ids (no BOS/EOS)

Export layout (docs/contracts.md, the plain export): config.json (format "admin-ds-plain", d_model, nhead,
dim_feedforward, num_encoder_layers, num_decoder_layers, layer_norm_eps, src_vocab_size, tgt_vocab_size,
max_positions, embed_scale, pad_id, bos_id, eos_id, norm_first, activation "relu") and model.safetensors
with ``src_embed.weight``, ``tgt_embed.weight`` [V, D],
``src_pos``, ``tgt_pos`` [max_positions, D], ``encoder.layers.{i}.*`` / ``decoder.layers.{j}.*`` (the keys of
torch.nn.TransformerEncoderLayer / TransformerDecoderLayer), ``output_proj.weight`` [V, D] (and
``output_proj.bias`` if present). With norm_first (a Pre-LN model) also ``encoder.norm.*`` and
``decoder.norm.*``: the final LayerNorms, as torch.nn.TransformerEncoder / TransformerDecoder name them.

Forward: x = embed_scale * src_embed[src] + src_pos[:S]; encoder layers with the source padding mask;
y = embed_scale * tgt_embed[tgt] + tgt_pos[:T]; decoder layers with a causal mask and the memory padding mask;
logits = y @ output_proj.weight.T (+ bias). Padding masks are boolean with True marking padding.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from torch import nn


class Table(nn.Module):
    """A bare [rows, D] weight looked up by index (no nn.Embedding: no padding_idx or max_norm rules)."""

    def __init__(self, rows, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, dim))


class PlainTransformer(nn.Module):
    """The encoder-decoder of a plain export: torch.nn.TransformerEncoder / TransformerDecoder inside."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        d, eps = config["d_model"], config["layer_norm_eps"]
        norm_first = bool(config.get("norm_first", False))
        layer_args = dict(d_model=d, nhead=config["nhead"], dim_feedforward=config["dim_feedforward"], dropout=0.0,
                          activation="relu", layer_norm_eps=eps, batch_first=True, norm_first=norm_first)
        self.src_embed = Table(config["src_vocab_size"], d)
        self.tgt_embed = Table(config["tgt_vocab_size"], d)
        self.register_buffer("src_pos", torch.empty(config["max_positions"], d))
        self.register_buffer("tgt_pos", torch.empty(config["max_positions"], d))
        # Pre-LN stacks end with a LayerNorm; Post-LN layers already end with one.
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args), config["num_encoder_layers"],
                                             norm=nn.LayerNorm(d, eps=eps) if norm_first else None,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args), config["num_decoder_layers"],
                                             norm=nn.LayerNorm(d, eps=eps) if norm_first else None)
        self.output_proj = nn.Linear(d, config["tgt_vocab_size"], bias=bool(config.get("output_bias", False)))

    def encode(self, src_tokens):
        """src_tokens [B, S] -> (memory [B, S, D], padding mask [B, S])."""
        padding_mask = src_tokens.eq(self.config["pad_id"])
        x = self.config["embed_scale"] * self.src_embed.weight[src_tokens] + self.src_pos[: src_tokens.size(1)]
        return self.encoder(x, src_key_padding_mask=padding_mask), padding_mask

    def decode(self, tgt_tokens, memory, padding_mask):
        """tgt_tokens [B, T] (BOS first) -> logits [B, T, V]."""
        time = tgt_tokens.size(1)
        y = self.config["embed_scale"] * self.tgt_embed.weight[tgt_tokens] + self.tgt_pos[:time]
        causal = torch.ones(time, time, dtype=torch.bool, device=y.device).triu(1)  # True = may not attend
        y = self.decoder(y, memory, tgt_mask=causal, memory_key_padding_mask=padding_mask, tgt_is_causal=True)
        return self.output_proj(y)

    def forward(self, src_tokens, tgt_tokens):
        memory, padding_mask = self.encode(src_tokens)
        return self.decode(tgt_tokens, memory, padding_mask)


def load_plain(export_dir):
    """Build and load a plain export (strict: every key must match) in eval mode."""
    with open(os.path.join(export_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    state = load_file(os.path.join(export_dir, "model.safetensors"))
    config["output_bias"] = "output_proj.bias" in state
    model = PlainTransformer(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def greedy(model, src_ids, max_len_a=1.2, max_len_b=10, min_len=1):
    """Greedy decoding of one sentence (source ids ending with EOS) -> generated ids without BOS/EOS.

    The rules of admin-ds' beam search at beam 1: PAD and BOS are never generated, EOS not before
    ``min_len`` tokens, and at most int(max_len_a * len(src_ids) + max_len_b) tokens before EOS.
    """
    cfg = model.config
    src = torch.tensor([list(src_ids)], dtype=torch.long)
    cap = max(min_len, min(int(max_len_a * len(src_ids) + max_len_b), cfg["max_positions"] - 1))
    memory, padding_mask = model.encode(src)
    tokens = [cfg["bos_id"]]
    for step in range(cap):  # after ``cap`` tokens EOS is forced
        logits = model.decode(torch.tensor([tokens]), memory, padding_mask)[0, -1]  # [V]: the newest position
        logits[cfg["pad_id"]] = logits[cfg["bos_id"]] = float("-inf")
        if step < min_len:
            logits[cfg["eos_id"]] = float("-inf")
        token = int(logits.argmax())  # the argmax of log_softmax(logits)
        if token == cfg["eos_id"]:
            break
        tokens.append(token)
    return tokens[1:]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run a plain admin-ds export with stock torch.nn layers.")
    parser.add_argument("export_dir", help="a folder written by `admin-ds convert CKPT OUT --plain`")
    parser.add_argument("--ids", help='source token ids, e.g. "17 42 5" (EOS is appended if missing)')
    parser.add_argument("--max-len-b", type=int, default=10, help="at most 1.2 * source length + this many tokens")
    args = parser.parse_args(argv)
    model = load_plain(args.export_dir)
    cfg = model.config
    kind = "Pre-LN" if cfg.get("norm_first") else "Post-LN"
    params = sum(p.numel() for p in model.parameters())
    print(f"plain {kind} Transformer: {cfg['num_encoder_layers']} encoder / {cfg['num_decoder_layers']} decoder "
          f"layers, d_model {cfg['d_model']}, {cfg['nhead']} heads, FFN {cfg['dim_feedforward']}, vocab "
          f"{cfg['src_vocab_size']}/{cfg['tgt_vocab_size']}, {params / 1e6:.2f}M parameters")
    if args.ids:
        src = [int(x) for x in args.ids.replace(",", " ").split()]
    else:  # a built-in example: the first ten ordinary ids
        specials = {cfg["pad_id"], cfg["bos_id"], cfg["eos_id"]}
        src = [i for i in range(cfg["src_vocab_size"]) if i not in specials and i > 3][:10]
    if not src or src[-1] != cfg["eos_id"]:
        src.append(cfg["eos_id"])
    if max(src) >= cfg["src_vocab_size"] or min(src) < 0:
        print(f"error: source ids must lie in [0, {cfg['src_vocab_size']})", file=sys.stderr)
        return 2
    print("source ids:", " ".join(map(str, src)))
    print("greedy ids:", " ".join(map(str, greedy(model, src, max_len_b=args.max_len_b))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
