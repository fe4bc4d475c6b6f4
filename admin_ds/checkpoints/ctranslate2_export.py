"""A model as a CTranslate2 model directory (``admin-ds convert CKPT OUT --format ctranslate2``).

CTranslate2's own fairseq converter knows nothing of Admin's shortcut scales and would drop ω. This one
starts from the folded plain model instead (``admin_ds.model.reparam.to_plain``: a Post-LN Transformer
with ω folded into its weights, docs/admin.md) and fills a ``ctranslate2.specs.TransformerSpec`` with it:

  - post-norm layers, ReLU, LayerNorm epsilon from the model config;
  - embeddings multiplied by sqrt(D), as ``admin_ds.model.embedding`` does;
  - the position tables stored as they are (not CTranslate2's own sinusoids: ours put sin and cos in
    the two halves with fairseq's frequencies, and folding put ω_1 into them); position 0 is the first
    token on both sides, with no padding offset, as in our embedding;
  - separate source, target and output tables: folding unties them (each carries its own ω_1);
  - the sentencepiece pieces in id order as the vocabularies, so CTranslate2's token ids are ours. The
    special pieces (ids 1, 2, 3 of ``admin_ds.vocab``) become its unk, bos and eos tokens; BOS starts the
    decoder, EOS ends the source (``add_source_eos``). Ids the tokenizer does not cover (a model
    vocabulary larger than the sentencepiece model) get placeholder tokens that decoding suppresses.

CTranslate2 writes and quantises the weights itself (``spec.optimize`` / ``spec.save``). OUT holds its
``model.bin``, ``config.json`` and vocabulary files plus the sentencepiece model(s) and
``admin_ds_ctranslate2.json`` (what it was made from; how ``admin-ds translate --engine ctranslate2``
finds the tokenizer). ctranslate2 is imported here only, and only when a conversion runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from admin_ds.errors import UserError
from admin_ds.io import atomic_directory
from admin_ds.model import TranslationModel
from admin_ds.model.reparam import to_plain
from admin_ds.vocab import SPECIAL_IDS

QUANTIZATIONS = ("int8", "int8_float32", "float16", "bfloat16")
CT2_INFO = "admin_ds_ctranslate2.json"
CT2_FORMAT = "admin-ds-ctranslate2"
PLACEHOLDER = "<admin-ds-unused-{}>"


def check_quantization(quantization: Optional[str]) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")


def import_ctranslate2():
    """The ctranslate2 module, or a UserError saying how to get it."""
    try:
        import ctranslate2
        import ctranslate2.specs  # noqa: F401  (the submodule is not imported by the package itself)
    except ImportError:
        raise UserError("the ctranslate2 package is not installed: pip install 'admin-ds[ctranslate2]' "
                        "(or pip install ctranslate2)") from None
    return ctranslate2


def vocabulary(pieces: list[str], size: int, side: str) -> list[str]:
    """The model's ``size`` tokens in id order: the sentencepiece pieces, then unique placeholders."""
    if len(pieces) > size:
        raise UserError(f"the {side} sentencepiece model has {len(pieces)} pieces but the model's {side} "
                        f"vocabulary has {size}: they do not belong together")
    if len(set(pieces)) != len(pieces):
        raise UserError(f"the {side} sentencepiece model has duplicate pieces")
    return pieces + [PLACEHOLDER.format(i) for i in range(len(pieces), size)]


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().contiguous().numpy()


def _linear(spec, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    spec.weight = _array(weight)
    if bias is not None:
        spec.bias = _array(bias)


def _norm(spec, tensors: dict, prefix: str) -> None:
    spec.gamma = _array(tensors[f"{prefix}.weight"])
    spec.beta = _array(tensors[f"{prefix}.bias"])


def _attention(spec, tensors: dict, prefix: str, d_model: int, fused_qkv: bool) -> None:
    """torch.nn's packed in_proj (q, k, v rows) -> CTranslate2's linear[0..]: fused q|k|v for self-
    attention; q, then fused k|v for cross-attention (whose keys and values read the encoder output)."""
    weight, bias = tensors[f"{prefix}.in_proj_weight"], tensors[f"{prefix}.in_proj_bias"]
    if fused_qkv:
        _linear(spec.linear[0], weight, bias)
    else:
        _linear(spec.linear[0], weight[:d_model], bias[:d_model])
        _linear(spec.linear[1], weight[d_model:], bias[d_model:])
    _linear(spec.linear[-1], tensors[f"{prefix}.out_proj.weight"], tensors[f"{prefix}.out_proj.bias"])


def _ffn(spec, tensors: dict, prefix: str, norm: str) -> None:
    _linear(spec.linear_0, tensors[f"{prefix}.linear1.weight"], tensors[f"{prefix}.linear1.bias"])
    _linear(spec.linear_1, tensors[f"{prefix}.linear2.weight"], tensors[f"{prefix}.linear2.bias"])
    _norm(spec.layer_norm, tensors, f"{prefix}.{norm}")


def transformer_spec(settings: dict, tensors: dict[str, torch.Tensor], src_vocab: list[str],
                     tgt_vocab: list[str], specials: dict[str, str]):
    """A filled ``ctranslate2.specs.TransformerSpec`` for a plain Post-LN export (``to_plain``'s output).

    ``specials``: the unk, bos and eos pieces (ids 1, 2, 3).
    """
    ctranslate2 = import_ctranslate2()
    specs = ctranslate2.specs
    if settings.get("norm_first") or settings.get("activation", "relu") != "relu":
        raise UserError("only Post-LN ReLU models convert to CTranslate2 (Pre-LN models are not supported yet)")
    d = settings["d_model"]
    spec = specs.TransformerSpec.from_config((settings["num_encoder_layers"], settings["num_decoder_layers"]),
                                             settings["nhead"], pre_norm=False,
                                             activation=specs.Activation.RELU)
    for side, stack in (("src", spec.encoder), ("tgt", spec.decoder)):
        embeddings = stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings
        embeddings.weight = _array(tensors[f"{side}_embed.weight"])
        stack.scale_embeddings = np.float32(settings["embed_scale"])
        stack.position_encodings.encodings = _array(tensors[f"{side}_pos"])
    for i, layer in enumerate(spec.encoder.layer):
        prefix = f"encoder.layers.{i}"
        _attention(layer.self_attention, tensors, f"{prefix}.self_attn", d, fused_qkv=True)
        _norm(layer.self_attention.layer_norm, tensors, f"{prefix}.norm1")
        _ffn(layer.ffn, tensors, prefix, "norm2")
    for i, layer in enumerate(spec.decoder.layer):
        prefix = f"decoder.layers.{i}"
        _attention(layer.self_attention, tensors, f"{prefix}.self_attn", d, fused_qkv=True)
        _norm(layer.self_attention.layer_norm, tensors, f"{prefix}.norm1")
        _attention(layer.attention, tensors, f"{prefix}.multihead_attn", d, fused_qkv=False)
        _norm(layer.attention.layer_norm, tensors, f"{prefix}.norm2")
        _ffn(layer.ffn, tensors, prefix, "norm3")
    _linear(spec.decoder.projection, tensors["output_proj.weight"], tensors.get("output_proj.bias"))
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    config = spec.config
    config.unk_token, config.bos_token, config.eos_token = specials["unk"], specials["bos"], specials["eos"]
    config.decoder_start_token = specials["bos"]
    config.add_source_bos, config.add_source_eos = False, True
    config.layer_norm_epsilon = float(settings["layer_norm_eps"])
    return spec


def write_ctranslate2(model: TranslationModel, out: str | Path, spm: tuple[dict[str, Path], object],
                      src_tokenizer, tgt_tokenizer, quantization: Optional[str] = None, force: bool = False,
                      extra: Optional[dict] = None) -> Path:
    """Fold ``model`` in place and write it as a CTranslate2 model directory at ``out`` (see the module
    docstring). ``spm``: (file name in OUT -> sentencepiece model to copy there, the "spm_model" entry
    naming them, as ``rundir.tokenizer_files`` gives them)."""
    spm_files, spm_entry = spm
    check_quantization(quantization)
    import_ctranslate2()
    cfg = model.cfg
    src_vocab = vocabulary(src_tokenizer.pieces(), cfg.src_vocab_size, "source")
    tgt_vocab = vocabulary(tgt_tokenizer.pieces(), cfg.tgt_vocab_size, "target")
    ids = {"unk": SPECIAL_IDS.unk, "bos": SPECIAL_IDS.bos, "eos": SPECIAL_IDS.eos}
    specials = {name: tgt_vocab[i] for name, i in ids.items()}
    if {name: src_vocab[i] for name, i in ids.items()} != specials:
        raise UserError("the source and target sentencepiece models name their special pieces differently")
    residual = cfg.residual
    settings, tensors = to_plain(model, inplace=True)
    spec = transformer_spec(settings, tensors, src_vocab, tgt_vocab, specials)
    del tensors
    info = {"format": CT2_FORMAT, "source_residual": residual, "quantization": quantization or "float32",
            "max_positions": settings["max_positions"], "pad_id": settings["pad_id"],
            "tokenizer_sizes": {"src": len(src_tokenizer.pieces()), "tgt": len(tgt_tokenizer.pieces())},
            "spm_model": spm_entry, **(extra or {})}
    with atomic_directory(out, force) as tmp:
        try:
            spec.validate()
            spec.optimize(quantization=quantization)
            spec.save(str(tmp))
        except (ValueError, TypeError) as err:  # the spec's own checks: shapes, vocabulary sizes
            raise UserError(f"CTranslate2 refused the converted model: {err}") from None
        for name, source in spm_files.items():
            shutil.copyfile(source, tmp / name)
        (tmp / CT2_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return Path(out)

