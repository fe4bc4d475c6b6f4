"""Scoring translations with sacrebleu (BLEU and chrF, with their signatures), and the text of a split.

The source and reference text of a prepared dataset's split come from the raw text files it names in
meta.json as ``"raw": {SPLIT: {"src": path, "tgt": path}}`` (``prepare`` copies the valid and test files
into DIR/SPLIT.LANG.txt; docs/contracts.md §4), or, for a dataset prepared before that, from the binarised split
itself, decoded with the dataset's sentencepiece models. The latter is detokenised text (after
sentencepiece's normalisation, without pairs ``prepare`` dropped), so its BLEU is not comparable with
published figures; ``split_text`` says which one it used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Optional

from sacrebleu.metrics import BLEU, CHRF

from admin_ds.data import DataInfo, ParallelDataset, load_meta
from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.translate import load_tokenizer
from admin_ds.inference.translator import Translator
from admin_ds.io import read_text_lines


def score(hypotheses: Sequence[str], references: Sequence[str], tokenize: Optional[str] = None) -> dict:
    """Corpus BLEU and chrF of ``hypotheses`` against one reference each, with sacrebleu's signatures."""
    if len(hypotheses) != len(references):
        raise UserError(f"{len(hypotheses)} hypotheses but {len(references)} references; "
                        "line N of one must correspond to line N of the other")
    bleu = BLEU(tokenize=tokenize) if tokenize else BLEU()
    chrf = CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(bleu_score),
        "n_sentences": len(hypotheses),
    }


def split_text(data: str, split: str) -> tuple[list[str], list[str], str]:
    """(source lines, reference lines, where they came from) of a prepared dataset's split."""
    info = load_meta(data)  # checks that DIR is a prepared dataset
    if split in info.raw_text:
        return (*raw_split_text(info, split), "raw")
    dataset = ParallelDataset.load(data, split)
    src_tok = load_tokenizer(info.src_spm_path)
    tgt_tok = src_tok if info.tgt_spm_path == info.src_spm_path else load_tokenizer(info.tgt_spm_path)
    pairs = [dataset[i] for i in range(len(dataset))]
    return ([src_tok.decode(src.tolist()) for src, _ in pairs],
            [tgt_tok.decode(tgt.tolist()) for _, tgt in pairs], "binarised")


def raw_split_text(info: DataInfo, split: str) -> tuple[list[str], list[str]]:
    """(source lines, reference lines) of the raw text meta.json records for ``split`` (every line)."""
    src_file, ref_file = info.raw_text[split]
    src = read_text_lines(str(src_file), f"meta.json's raw {split} source")
    ref = read_text_lines(str(ref_file), f"meta.json's raw {split} reference")
    if len(src) != len(ref):
        raise UserError(f"{src_file} has {len(src)} lines but {ref_file} has {len(ref)}: the raw {split} "
                        "text meta.json records is not parallel")
    return src, ref


def translate_and_score(checkpoint: str, decoding: DecodingConfig, sources: Sequence[str],
                        references: Sequence[str], tokenize: Optional[str] = None,
                        data: Optional[str] = None, engine: str = "admin-ds") -> tuple[dict, list[str]]:
    """Translate ``sources`` with ``checkpoint`` on ``engine`` (``Translator``) and score them; (the result
    dict, the translations)."""
    if len(sources) != len(references):
        raise UserError(f"{len(sources)} source lines but {len(references)} references")
    translator = Translator(checkpoint, engine, data=data, decoding=decoding)
    start = time.perf_counter()
    hyps = translator.translate_nbest(sources, progress=None)
    elapsed = time.perf_counter() - start
    hypotheses = [sentence[0][0] for sentence in hyps]
    result = {**score(hypotheses, references, tokenize), "checkpoint": str(checkpoint), "engine": engine,
              "beam": decoding.beam, "lenpen": decoding.lenpen, "translate_seconds": round(elapsed, 3),
              "sentences_per_second": round(len(sources) / max(elapsed, 1e-9), 2)}
    return result, hypotheses
