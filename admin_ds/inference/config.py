"""Decoding settings shared by ``translate`` and ``evaluate``: one dataclass, validated at the edge."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from admin_ds.errors import UserError
from admin_ds.options import option

# --caps: whose length cap a sentence decodes under with --engine ctranslate2 (ctranslate2_engine.py). The
# flag's choices and validate() (the Python entry points' check) both read this tuple.
CAP_RULES = ("sentence", "batch")


@dataclass
class DecodingConfig:
    """How to search, batch, tokenise and where to run."""

    beam: int = option(5, help="beam size; 1 is greedy search")
    lenpen: float = option(1.0, help="length penalty: score = sum log p / len^lenpen")
    max_len_a: float = option(1.2, help="generate at most a * src_len + b tokens: a")
    max_len_b: int = option(10, help="see --max-len-a: b")
    max_tokens: int = option(4096, help="padded source tokens per batch")
    spm: Optional[str] = option(None, help="sentencepiece model (default: found beside the checkpoint)")
    tgt_spm: Optional[str] = option(None, help="target sentencepiece model when the vocabularies are separate")
    device: Optional[str] = option(None, help="cpu, cuda or cuda:N (default: cuda when available)")
    fp16: bool = option(False, help="decode in float16 (GPU)")
    bf16: bool = option(False, help="decode in bfloat16")
    threads: int = option(0, help="CPU threads (0: the engine's default: torch's; with --engine ctranslate2 "
                                  "the threads of each worker: 1 when --workers is 0 on the CPU, else "
                                  "CTranslate2's default)")
    workers: int = option(0, help="--engine ctranslate2: batches decoded in parallel (CTranslate2's "
                                  "inter_threads); 0: on the CPU as many as fit its cores at --threads each "
                                  "(one per core at --threads 1, CTranslate2's throughput setting), on a GPU 1")
    caps: str = option("sentence", choices=CAP_RULES,
                       help="--engine ctranslate2: the length cap (--max-len-a/b) of a sentence is its own, as in "
                            "our beam search (sentence), or its batch's longest sentence's (batch: larger "
                            "batches, faster; docs/deploy.md)")

    def validate(self) -> DecodingConfig:
        if self.beam < 1:
            raise UserError(f"--beam must be at least 1, got {self.beam}")
        if not math.isfinite(self.max_len_a):
            raise UserError(f"--max-len-a must be a finite number, got {self.max_len_a}")
        if self.max_tokens < 1:
            raise UserError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.threads < 0:
            raise UserError(f"--threads must be 0 (the default) or more, got {self.threads}")
        if self.workers < 0:
            raise UserError(f"--workers must be 0 (one per core) or more, got {self.workers}")
        if self.caps not in CAP_RULES:
            raise UserError(f"--caps must be one of {', '.join(CAP_RULES)}, got {self.caps!r}")
        if self.fp16 and self.bf16:
            raise UserError("choose one of --fp16 and --bf16")
        return self
