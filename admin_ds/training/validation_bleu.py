"""BLEU and chrF at every validation (``admin-ds train --eval-bleu``; docs/training.md).

The first ``--eval-bleu-lines`` lines (all by default) of the valid split's raw source text, which meta.json
records (data/meta.py), are translated with the beam search of ``admin-ds translate`` (its defaults but
the beam, ``--eval-bleu-beam``), detokenised by sentencepiece and scored with sacrebleu against the raw
reference, by the same functions ``admin-ds evaluate`` uses: a BLEU row equals what ``evaluate --data DIR
--split valid --beam B --lines N`` gives for that step's checkpoint.

Several ranks share the lines rather than wait for rank 0: decoding is nearly all of the time and divides
by the ranks, while gathering the translations moves a few hundred kilobytes (``python -m
bench.bench_eval_bleu`` times both world sizes). The lines are sorted by source length and dealt round
robin, so every rank gets a similar mix; every rank then gets every translation (``all_gather_texts``)
and scores the same text the same way, so ``best/`` and ``--patience`` decide alike on every rank with no
broadcast. Decoding draws no random number: training's random streams, and so a resume, are untouched.

Under ZeRO-3 each rank holds a slice of every weight and a forward of the engine's module is a collective
that all ranks must run in step, which beam search (a different number of steps on each rank) cannot do;
there the gathered fp32 weights are loaded into a plain copy of the model on each rank for the decoding
(one full model's memory more while it runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch

from admin_ds.data import DataInfo, Tokenizer
from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.scoring import raw_split_text, score
from admin_ds.inference.translate import translate_with
from admin_ds.model import TranslationModel
from admin_ds.training.config import TrainConfig
from admin_ds.training.engine import all_gather_texts, gathered_state_dict, world_size, zero_stage_of

log = logging.getLogger("admin_ds")


def shard(lengths: list[int], rank: int, world: int) -> list[int]:
    """The line indices ``rank`` decodes, in input order: every ``world``-th line by source length."""
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable: ties keep input order
    return sorted(by_length[rank::world])


class BleuValidation:
    """The lines, references and tokenizers of ``--eval-bleu``; ``scores`` decodes and scores them."""

    def __init__(self, sources: list[str], references: list[str], src_tokenizer: Tokenizer,
                 tgt_tokenizer: Tokenizer, beam: int):
        self.sources, self.references = sources, references
        self.src_tokenizer, self.tgt_tokenizer = src_tokenizer, tgt_tokenizer
        self.decoding = DecodingConfig(beam=beam).validate()  # `admin-ds translate`'s defaults otherwise
        self.lengths = [len(src_tokenizer.encode(line)) for line in sources]  # what dealing the lines balances
        self.signatures_logged = False

    @classmethod
    def for_run(cls, cfg: TrainConfig, data: DataInfo) -> Optional[BleuValidation]:
        """None without --eval-bleu; a UserError when the data has no valid split or no raw text for it."""
        if not cfg.eval_bleu:
            return None
        split = cfg.valid_split
        if split not in data.split_sizes:
            raise UserError(f"--eval-bleu scores the {split} split (--valid-split), but {data.data_dir} has none")
        if split not in data.raw_text:
            raise UserError(f"--eval-bleu needs the raw {split} text (source and reference), but "
                            f"{data.data_dir}/meta.json records none (prepared before `prepare` kept it): "
                            "prepare the data again")
        sources, references = raw_split_text(data, split)
        lines = cfg.eval_bleu_lines or len(sources)
        src_tokenizer = Tokenizer(data.src_spm_path)
        tgt_tokenizer = src_tokenizer if data.tgt_spm_path == data.src_spm_path else Tokenizer(data.tgt_spm_path)
        return cls(sources[:lines], references[:lines], src_tokenizer, tgt_tokenizer, cfg.eval_bleu_beam)

    @torch.no_grad()
    def scores(self, engine, device: torch.device) -> dict:
        """{"bleu", "chrf"} of the current weights; every rank calls it (a gather), and gets the same."""
        start = time.perf_counter()
        rank, world = engine.global_rank, world_size()
        mine = shard(self.lengths, rank, world)
        with self._decoding_model(engine, device) as model:
            found = translate_with(model, self.src_tokenizer, self.tgt_tokenizer, [self.sources[i] for i in mine],
                                   self.decoding)
        hypotheses = [""] * len(self.sources)
        for other, texts in enumerate(all_gather_texts([nbest[0][0] for nbest in found], device)):
            for index, text in zip(shard(self.lengths, other, world), texts):
                hypotheses[index] = text
        result = score(hypotheses, self.references)
        if not self.signatures_logged:
            log.info("--eval-bleu: %d lines, beam %d; sacrebleu BLEU %s, chrF %s", len(self.sources),
                     self.decoding.beam, result["signature"], result["chrf_signature"])
            self.signatures_logged = True
        log.info("BLEU %.2f, chrF %.2f (%.1f s on %d rank(s))", result["bleu"], result["chrf"],
                 time.perf_counter() - start, world)
        return {"bleu": result["bleu"], "chrf": result["chrf"]}

    @contextmanager
    def _decoding_model(self, engine, device: torch.device) -> Iterator[TranslationModel]:
        """The engine's module itself, in eval mode; under ZeRO-3 a plain fp32 copy of the gathered weights."""
        if zero_stage_of(engine) != 3:
            yield engine.module
            return
        state = gathered_state_dict(engine)  # a collective: every rank gathers
        with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: leave training's be
            model = TranslationModel(engine.module.cfg)
        model.load_state_dict(state)
        yield model.to(device).eval()
