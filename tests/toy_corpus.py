"""A toy corpus and its sentencepiece model, for tests of exports and decoding on random-weight models.

The model has 60 pieces, fewer than admin-tiny's 64 ids, so every converter and decoder must suppress the
ids past the tokenizer (docs/deploy.md)."""

from __future__ import annotations

import random
from pathlib import Path

import sentencepiece as spm

WORDS = "the a cat dog sees runs big small red blue house tree river eats sleeps and with".split()


def toy_sentences(n: int, seed: int) -> list[str]:
    """n sentences of 1-8 words drawn from WORDS, the same for the same seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def train_toy_spm(root: Path) -> Path:
    """Write root/corpus.txt (300 toy sentences) and train root/spm.model on it (BPE, 60 pieces, our special
    ids); return the model's path."""
    (root / "corpus.txt").write_text("\n".join(toy_sentences(300, 0)) + "\n")
    spm.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "spm"), vocab_size=60,
                                   model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   hard_vocab_limit=False, minloglevel=2)
    return root / "spm.model"
