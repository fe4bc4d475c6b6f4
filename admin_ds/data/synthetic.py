"""A small deterministic toy translation task, generated in code: the demo's built-in corpus.

Two invented languages, "src" and "tgt", with the same grammar and a one-to-one lexicon:

    sentence = subject-phrase verb object-phrase [preposition phrase]
    phrase   = [determiner] adjective* noun            (0 to 2 adjectives)

Translation is word for word with two reordering rules a model has to learn:
    1. adjectives follow their noun in "tgt" (like French), in reverse order;
    2. the verb moves to the end of the sentence in "tgt" (like German subordinate clauses).

Sentences have 3 to 12 words. The lexicon (about 180 words a side) is fixed, only the sentences depend
on the seed, and the output is identical for a given seed on any platform (it uses `random.Random`,
whose integer methods are stable across Python versions). A small Transformer learns it in minutes on a CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

SOURCE_LANG = "src"
TARGET_LANG = "tgt"
MIN_WORDS, MAX_WORDS = 3, 12

# How many words of each class; the lexicon is built from syllables, so the counts are all it needs.
_CLASS_SIZES = {"noun": 80, "verb": 40, "adjective": 40, "determiner": 4, "preposition": 8}
_LEXICON_SEED = 20240501  # fixed: changing it would change the languages, not just the sentences


def _make_words(rng: random.Random, count: int, syllables: list[str], min_syl: int, max_syl: int,
                taken: set[str]) -> list[str]:
    words = []
    while len(words) < count:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(min_syl, max_syl)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _build_lexicon() -> dict[str, list[tuple[str, str]]]:
    """Word class -> list of (src word, tgt word) pairs; distinct spellings so the languages look different."""
    rng = random.Random(_LEXICON_SEED)
    src_syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # open syllables: "bado"
    tgt_syllables = [c + v + e for c in "hjkqwxy" for v in "aeiouy" for e in "nrs"]  # closed: "kenwas"
    src_taken, tgt_taken = set(), set()
    lexicon = {}
    for word_class, size in _CLASS_SIZES.items():
        # Function words are short in both languages, as in natural ones.
        longest = 1 if word_class in ("determiner", "preposition") else 3
        src_words = _make_words(rng, size, src_syllables, 1 if longest == 1 else 2, longest, src_taken)
        tgt_words = _make_words(rng, size, tgt_syllables, 1, max(1, longest - 1), tgt_taken)
        lexicon[word_class] = list(zip(src_words, tgt_words))
    return lexicon


_LEXICON = _build_lexicon()


def _phrase(rng: random.Random) -> tuple[list[str], list[str]]:
    """A noun phrase: src `det adj* noun`, tgt `det noun adj*` with the adjectives reversed."""
    det = [rng.choice(_LEXICON["determiner"])] if rng.random() < 0.6 else []
    adjectives = [rng.choice(_LEXICON["adjective"]) for _ in range(rng.choice((0, 0, 1, 1, 2)))]
    noun = rng.choice(_LEXICON["noun"])
    src = [w for w, _ in det] + [w for w, _ in adjectives] + [noun[0]]
    tgt = [w for _, w in det] + [noun[1]] + [w for _, w in reversed(adjectives)]
    return src, tgt


def synthetic_pair(rng: random.Random) -> tuple[str, str]:
    """One (source, target) sentence pair drawn with `rng`, 3 to 12 words long."""
    while True:
        subject_src, subject_tgt = _phrase(rng)
        verb_src, verb_tgt = rng.choice(_LEXICON["verb"])
        object_src, object_tgt = _phrase(rng)
        src = subject_src + [verb_src] + object_src
        tgt = subject_tgt + object_tgt
        if rng.random() < 0.4:
            prep_src, prep_tgt = rng.choice(_LEXICON["preposition"])
            extra_src, extra_tgt = _phrase(rng)
            src += [prep_src] + extra_src
            tgt += [prep_tgt] + extra_tgt
        tgt.append(verb_tgt)  # rule 2: verb last
        if MIN_WORDS <= len(src) <= MAX_WORDS:
            return " ".join(src), " ".join(tgt)


def write_synthetic_corpus(out_dir: str | Path, n_train: int = 20_000, n_valid: int = 500, n_test: int = 500,
                           seed: int = 0) -> dict[str, Path]:
    """Write `train`, `valid` and `test` splits as `SPLIT.src` / `SPLIT.tgt` under `out_dir`.

    No source sentence occurs twice, within or across splits, so validation and test measure
    generalisation rather than recall.

    Returns:
        split name -> file prefix, ready for `PrepareConfig(train_prefix=..., source_lang=SOURCE_LANG, ...)`.
    """
    for name, count in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if count < 1:
            raise ValueError(f"{name} must be positive, got {count}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    prefixes = {}
    for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        pairs = []
        while len(pairs) < count:
            src, tgt = synthetic_pair(rng)
            if src not in seen:
                seen.add(src)
                pairs.append((src, tgt))
        prefix = out_dir / split
        for lang, side in ((SOURCE_LANG, 0), (TARGET_LANG, 1)):
            Path(f"{prefix}.{lang}").write_text("".join(pair[side] + "\n" for pair in pairs), encoding="utf-8")
        prefixes[split] = prefix
    return prefixes
