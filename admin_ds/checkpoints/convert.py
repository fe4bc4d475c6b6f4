"""Converting any checkpoint into an fp32 export, a plain Post-LN export, a CTranslate2 model or a 🤗 transformers
model (``admin-ds convert``).

CKPT is anything ``load_model`` reads (load.py): a DeepSpeed directory of ``admin-ds train`` at any ZeRO
stage and world size (``latest`` or ``tag``), an fp32 or plain export, or a state dict from DeepSpeed's
zero_to_fp32.py. ZeRO shards are read one at a time into a single fp32 copy of the model, and safetensors
writes from the model's own memory, so the process holds about one copy of the weights plus one shard. ``plain`` folds
Admin's ω (and DeepNorm's α) into the neighbouring weights (``admin_ds.model.reparam``). The sentencepiece
model(s) go into the export too. ``ctranslate2`` writes the folded plain model with CTranslate2's own writer
(``ctranslate2_export.py``), ``hf`` as transformers' FSMT model with a MarianTokenizer (``hf_export.py``).
OUT appears only once complete; on any error nothing is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from admin_ds.checkpoints.ctranslate2_export import check_quantization, import_ctranslate2, write_ctranslate2
from admin_ds.checkpoints.exports import write_export, write_model_dir
from admin_ds.checkpoints.hf_card import evaluation_facts, run_facts
from admin_ds.checkpoints.hf_export import import_transformers, write_hf
from admin_ds.checkpoints.load import load_checkpoint
from admin_ds.checkpoints.rundir import tokenizer_files
from admin_ds.data import Tokenizer
from admin_ds.errors import UserError
from admin_ds.io import check_new_output
from admin_ds.model import TranslationModel
from admin_ds.model.reparam import to_plain

log = logging.getLogger("admin_ds")

FORMATS = ("fp32", "plain", "ctranslate2", "hf")
FORMAT_NAMES = {"ctranslate2": "CTranslate2", "hf": "transformers"}


def tokenizer_for_export(source: Path) -> tuple[dict[str, Path], dict]:
    """(files to copy into the export, config.json entries) for the tokenizer of ``source``; says so on
    the log when there is none to carry."""
    found = tokenizer_files(source)
    if found is None:
        log.warning("no sentencepiece model found for %s (beside it, or the prepared data its run's "
                    "train_config.json names): the export holds none; translate it with --spm PATH", source)
        return {}, {}
    files, entry = found
    return files, {"spm_model": entry}


def convert(checkpoint: str | Path, out: str | Path, tag: Optional[str] = None, plain: bool = False,
            force: bool = False, config: Optional[str | Path] = None, format: Optional[str] = None,
            quantization: Optional[str] = None, evaluation: Optional[str | Path] = None) -> Path:
    """Convert ``checkpoint`` into an fp32 export (default), a plain export (``plain`` or
    ``format="plain"``), a CTranslate2 model (``format="ctranslate2"``, optionally quantised) or a
    transformers model (``format="hf"``; ``evaluation``: an ``admin-ds evaluate`` JSON for its model card)
    at ``out``."""
    format = format or ("plain" if plain else "fp32")
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if plain and format != "plain":
        raise UserError(f"--plain and --format {format} contradict each other")
    if quantization is not None and format != "ctranslate2":
        raise UserError("--quantization only applies to --format ctranslate2")
    if evaluation is not None and format != "hf":
        raise UserError("--evaluation only applies to --format hf (it goes into the model card)")
    check_quantization(quantization)
    check_new_output(out, force)  # before reading gigabytes
    if format in ("ctranslate2", "hf"):
        extra = evaluation_facts(evaluation) if evaluation is not None else {}
        return convert_with_tokenizer(checkpoint, out, tag, force, config, format, quantization, extra)
    model, info = load_checkpoint(checkpoint, tag, config)
    source = Path(info["source"])
    return write_converted(model, source if source.is_dir() else source.parent, out, format == "plain", force,
                           {"converted_from": info})


def convert_with_tokenizer(checkpoint: str | Path, out: str | Path, tag: Optional[str], force: bool,
                           config: Optional[str | Path], format: str, quantization: Optional[str],
                           card: Optional[dict] = None) -> Path:
    """``convert(..., format="ctranslate2" or "hf")``: the package and the tokenizer are checked before the
    model is read, since neither kind of model can be written without its vocabulary."""
    if format == "ctranslate2":
        import_ctranslate2()
    else:
        import_transformers()
    start = Path(checkpoint)
    spm = tokenizer_files(start if start.is_dir() else start.parent)
    if spm is None:
        raise UserError(f"no sentencepiece model found for {checkpoint}: a {FORMAT_NAMES[format]} model needs its "
                        "vocabulary (put spm.model beside the checkpoint or convert a run directory)")
    files, entry = spm
    src_name, tgt_name = (entry, entry) if isinstance(entry, str) else (entry["src"], entry["tgt"])
    src = Tokenizer(files[src_name])
    tgt = src if tgt_name == src_name else Tokenizer(files[tgt_name])
    model, info = load_checkpoint(checkpoint, tag, config)
    if format == "ctranslate2":
        return write_ctranslate2(model, out, spm, src, tgt, quantization, force, {"converted_from": info})
    source = Path(info["source"])
    facts = {**run_facts(source if source.is_dir() else source.parent), **(card or {})}
    langs = tuple(lang or side for lang, side in zip(facts.get("langs") or (None, None), ("src", "tgt")))
    return write_hf(model, out, spm, src, tgt, langs, force, facts, {"converted_from": info})


def write_converted(model: TranslationModel, source: Path, out: str | Path, plain: bool = False,
                    force: bool = False, extra: Optional[dict] = None) -> Path:
    """Write a loaded ``model`` as an fp32 or (``plain``, folding the model in place) a plain export, with
    the tokenizer found for ``source``."""
    files, entries = tokenizer_for_export(source)
    entries.update(extra or {})
    if not plain:
        return write_export(model, out, force=force, extra=entries, files=files)
    residual = model.cfg.residual
    settings, tensors = to_plain(model, inplace=True)  # the model is ours: fold it without a copy
    settings.update(source_residual=residual, **entries)
    return write_model_dir(out, settings, list(tensors.items()), force=force, files=files)
