"""A model as a 🤗 transformers model directory (``admin-ds convert CKPT OUT --format hf``).

transformers loads the result with none of our code: ``AutoModelForSeq2SeqLM.from_pretrained(OUT)`` and
``pipeline("translation", model=OUT)``. Like the CTranslate2 export it starts from the folded plain model
(``admin_ds.model.reparam.to_plain``: Admin's ω and DeepNorm's α inside the weights of a plain Post-LN
Transformer, docs/admin.md) and maps it onto an existing transformers class:

  - ``FSMTForConditionalGeneration`` (fairseq's Transformer): Post-LN, ReLU, sqrt(D) embedding scale,
    separate source / target / output tables (``tie_word_embeddings: false``), q scaled by head_dim**-0.5,
    no final LayerNorm, no output bias. Its position table is an ordinary weight that ``save_pretrained``
    writes and ``from_pretrained`` reads, so our table, with ω_1 folded into it, survives a round trip.
    FSMT looks row ``pad + 1 + i`` up for position i: our row i is stored there, rows 0..pad are zero.
    (MarianMTModel does not fit: it recomputes its table with another frequency formula on every load and
    never saves it, and folding puts ω_1 into the table; docs/deploy.md.)
  - ``MarianTokenizer`` (named in tokenizer_config.json) over our sentencepiece model(s): ``source.spm``,
    ``target.spm`` and ``vocab.json`` (piece -> our id), EOS appended to the source as our encoder expects.
  - ``generation_config.json``: beam 5, length penalty 1, ``early_stopping: true`` (a sentence ends once K
    hypotheses ended, as ours), BOS as decoder start, EOS forced at the length cap, EOS banned at the first
    step, PAD, BOS and ids beyond the sentencepiece model suppressed (after the log-softmax, as ours).

transformers is imported here only, and only when a conversion runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from admin_ds.checkpoints.exports import WEIGHTS, write_safetensors
from admin_ds.checkpoints.hf_card import model_card
from admin_ds.errors import UserError
from admin_ds.io import atomic_directory
from admin_ds.model import TranslationModel
from admin_ds.model.reparam import to_plain
from admin_ds.vocab import SPECIAL_IDS

HF_INFO = "admin_ds_hf.json"
HF_FORMAT = "admin-ds-hf"
HF_LAYER_NORM_EPS = 1e-5  # FSMT's LayerNorms use torch's default epsilon; it is not a config field


def import_transformers():
    """The transformers module, or a UserError saying how to get it."""
    try:
        import transformers
    except ImportError:
        raise UserError("the transformers package is not installed: pip install 'admin-ds[hf]' "
                        "(or pip install transformers)") from None
    return transformers


def check_exportable(model: TranslationModel) -> None:
    """Refuse, in one line naming the fix, what FSMT cannot compute exactly."""
    cfg = model.cfg
    if cfg.residual == "pre-ln":
        raise UserError("a Pre-LN model cannot be exported to transformers (FSMT is Post-LN and Pre-LN has no "
                        "folded Post-LN form): use --format plain or --format fp32")
    if abs(cfg.layer_norm_eps - HF_LAYER_NORM_EPS) > 1e-12:
        raise UserError(f"layer_norm_eps {cfg.layer_norm_eps} cannot be exported to transformers (FSMT fixes "
                        f"it at {HF_LAYER_NORM_EPS}): use --format plain")
    if model.output_proj.bias is not None:
        raise UserError("an output projection with a bias cannot be exported to transformers (FSMT has none): "
                        "use --format plain")


def fsmt_config(settings: dict, src_lang: str, tgt_lang: str) -> dict:
    """FSMT's config.json for a plain Post-LN export's settings (``plain_config``)."""
    return {
        "architectures": ["FSMTForConditionalGeneration"], "model_type": "fsmt", "langs": [src_lang, tgt_lang],
        "src_vocab_size": settings["src_vocab_size"], "tgt_vocab_size": settings["tgt_vocab_size"],
        "d_model": settings["d_model"], "encoder_layers": settings["num_encoder_layers"],
        "decoder_layers": settings["num_decoder_layers"], "encoder_attention_heads": settings["nhead"],
        "decoder_attention_heads": settings["nhead"], "encoder_ffn_dim": settings["dim_feedforward"],
        "decoder_ffn_dim": settings["dim_feedforward"], "activation_function": "relu",
        "max_position_embeddings": settings["max_positions"], "scale_embedding": True,
        "tie_word_embeddings": False, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "is_encoder_decoder": True,
        "pad_token_id": settings["pad_id"], "bos_token_id": settings["bos_id"],
        "eos_token_id": settings["eos_id"], "decoder_start_token_id": settings["bos_id"],
        "forced_eos_token_id": settings["eos_id"], "torch_dtype": "float32",
        # FSMT drops its causal mask whenever use_cache is on, even for a full teacher-forced target: off
        # here, so that model(input_ids, decoder_input_ids=...) scores correctly; generate turns it on.
        "use_cache": False,
    }


def generation_config(settings: dict, src_pieces: int, tgt_pieces: int, beam: int = 5, lenpen: float = 1.0) -> dict:
    """generation_config.json: our beam search's defaults in transformers' terms (docs/deploy.md).

    ``max_length`` counts the decoder start token, so max_positions covers every position the table has;
    our per-sentence cap int(a * src_len + b) has no equivalent (pass ``max_new_tokens`` per call)."""
    pad, bos, eos = settings["pad_id"], settings["bos_id"], settings["eos_id"]
    return {"num_beams": beam, "length_penalty": lenpen, "early_stopping": True, "do_sample": False,
            "max_length": settings["max_positions"], "min_new_tokens": 1, "use_cache": True, "bos_token_id": bos,
            "eos_token_id": eos, "pad_token_id": pad, "decoder_start_token_id": bos, "forced_eos_token_id": eos,
            "suppress_tokens": sorted({pad, bos} | set(range(tgt_pieces, settings["tgt_vocab_size"])))}


def _positions(table: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Our table [P, D] as FSMT's [pad + 1 + P, D]: position i at row pad + 1 + i, zero rows before."""
    return torch.cat([table.new_zeros(pad_id + 1, table.size(1)), table])


def _attention(prefix: str, tensors: dict, plain: str, d: int) -> list[tuple[str, torch.Tensor]]:
    """torch.nn's packed in_proj (q, k, v rows) -> FSMT's q_proj, k_proj, v_proj, out_proj."""
    weight, bias = tensors[f"{plain}.in_proj_weight"], tensors[f"{plain}.in_proj_bias"]
    out = []
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        rows = slice(i * d, (i + 1) * d)
        out += [(f"{prefix}.{name}.weight", weight[rows]), (f"{prefix}.{name}.bias", bias[rows])]
    return out + [(f"{prefix}.out_proj.weight", tensors[f"{plain}.out_proj.weight"]),
                  (f"{prefix}.out_proj.bias", tensors[f"{plain}.out_proj.bias"])]


def _block(prefix: str, tensors: dict, plain: str, norms: dict[str, str]) -> list[tuple[str, torch.Tensor]]:
    """The FFN and the LayerNorms of one layer (``norms``: FSMT name -> torch.nn name)."""
    out = [(f"{prefix}.fc1.{p}", tensors[f"{plain}.linear1.{p}"]) for p in ("weight", "bias")]
    out += [(f"{prefix}.fc2.{p}", tensors[f"{plain}.linear2.{p}"]) for p in ("weight", "bias")]
    return out + [(f"{prefix}.{ours}.{p}", tensors[f"{plain}.{theirs}.{p}"])
                  for ours, theirs in norms.items() for p in ("weight", "bias")]


def fsmt_tensors(settings: dict, tensors: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(FSMT key, tensor) for every weight of FSMTForConditionalGeneration, from a plain export's tensors."""
    d, pad = settings["d_model"], settings["pad_id"]
    out = [("model.encoder.embed_tokens.weight", tensors["src_embed.weight"]),
           ("model.encoder.embed_positions.weight", _positions(tensors["src_pos"], pad)),
           ("model.decoder.embed_tokens.weight", tensors["tgt_embed.weight"]),
           ("model.decoder.embed_positions.weight", _positions(tensors["tgt_pos"], pad)),
           ("model.decoder.output_projection.weight", tensors["output_proj.weight"])]
    for i in range(settings["num_encoder_layers"]):
        ours, plain = f"model.encoder.layers.{i}", f"encoder.layers.{i}"
        out += _attention(f"{ours}.self_attn", tensors, f"{plain}.self_attn", d)
        out += _block(ours, tensors, plain, {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"})
    for i in range(settings["num_decoder_layers"]):
        ours, plain = f"model.decoder.layers.{i}", f"decoder.layers.{i}"
        out += _attention(f"{ours}.self_attn", tensors, f"{plain}.self_attn", d)
        out += _attention(f"{ours}.encoder_attn", tensors, f"{plain}.multihead_attn", d)
        out += _block(ours, tensors, plain, {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2",
                                             "final_layer_norm": "norm3"})
    return out


def tokenizer_config(specials: dict[str, str], separate: bool, max_positions: int, langs: tuple[str, str]) -> dict:
    return {"tokenizer_class": "MarianTokenizer", "source_lang": langs[0], "target_lang": langs[1],
            "unk_token": specials["unk"], "eos_token": specials["eos"], "pad_token": specials["pad"],
            "separate_vocabs": separate, "model_max_length": max_positions}


def vocab_json(pieces: list[str], size: int, side: str) -> dict[str, int]:
    """piece -> id for MarianTokenizer: our ids are the sentencepiece ids."""
    if len(pieces) > size:
        raise UserError(f"the {side} sentencepiece model has {len(pieces)} pieces but the model's {side} "
                        f"vocabulary has {size}: they do not belong together")
    if len(set(pieces)) != len(pieces):
        raise UserError(f"the {side} sentencepiece model has duplicate pieces")
    return {piece: i for i, piece in enumerate(pieces)}


def write_hf(model: TranslationModel, out: str | Path, spm: tuple[dict[str, Path], object], src_tokenizer,
             tgt_tokenizer, langs: tuple[str, str] = ("src", "tgt"), force: bool = False,
             card: Optional[dict] = None, extra: Optional[dict] = None) -> Path:
    """Fold ``model`` in place and write it as a transformers model directory at ``out`` (module docstring).

    ``spm``: (file name -> sentencepiece model, "spm_model" entry) as ``rundir.tokenizer_files`` gives them;
    ``card``: facts for README.md (``hf_card.model_card``)."""
    import_transformers()
    check_exportable(model)
    cfg = model.cfg
    src_vocab = vocab_json(src_tokenizer.pieces(), cfg.src_vocab_size, "source")
    tgt_vocab = vocab_json(tgt_tokenizer.pieces(), cfg.tgt_vocab_size, "target")
    ids = {"pad": cfg.pad_id, "unk": SPECIAL_IDS.unk, "eos": cfg.eos_id}
    specials = {name: tgt_tokenizer.piece(i) for name, i in ids.items()}
    if {name: src_tokenizer.piece(i) for name, i in ids.items()} != specials:
        raise UserError("the source and target sentencepiece models name their special pieces differently")
    spm_files, entry = spm
    src_name, tgt_name = (entry, entry) if isinstance(entry, str) else (entry["src"], entry["tgt"])
    src_file, tgt_file = spm_files[src_name], spm_files[tgt_name]
    separate = src_name != tgt_name
    residual = cfg.residual
    settings, tensors = to_plain(model, inplace=True)
    weights = fsmt_tensors(settings, tensors)
    info = {"format": HF_FORMAT, "source_residual": residual, "class": "FSMTForConditionalGeneration",
            "tokenizer_sizes": {"src": len(src_vocab), "tgt": len(tgt_vocab)}, **(extra or {})}
    with atomic_directory(out, force) as tmp:
        (tmp / "config.json").write_text(json.dumps(fsmt_config(settings, *langs), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            generation_config(settings, len(src_vocab), len(tgt_vocab)), indent=2) + "\n")
        write_safetensors(tmp / WEIGHTS, weights, metadata={"format": "pt"})
        shutil.copyfile(src_file, tmp / "source.spm")
        shutil.copyfile(tgt_file, tmp / "target.spm")
        (tmp / "vocab.json").write_text(json.dumps(src_vocab, ensure_ascii=False, indent=1) + "\n",
                                        encoding="utf-8")
        if separate:
            (tmp / "target_vocab.json").write_text(json.dumps(tgt_vocab, ensure_ascii=False, indent=1) + "\n",
                                                   encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            tokenizer_config(specials, separate, settings["max_positions"], langs), indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(settings, residual, langs, card or {}), encoding="utf-8")
        (tmp / HF_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return Path(out)
