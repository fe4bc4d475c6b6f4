"""The built-in toy corpus: deterministic, well-formed, and a consistent translation task."""

import random

from admin_ds.data import write_synthetic_corpus
from admin_ds.data.synthetic import _LEXICON, MAX_WORDS, MIN_WORDS, SOURCE_LANG, TARGET_LANG, synthetic_pair


def read(prefix, lang):
    return (prefix.parent / f"{prefix.name}.{lang}").read_text(encoding="utf-8").splitlines()


def test_same_seed_same_bytes_and_other_seed_other_sentences(tmp_path):
    a = write_synthetic_corpus(tmp_path / "a", n_train=200, n_valid=20, n_test=20, seed=1)
    b = write_synthetic_corpus(tmp_path / "b", n_train=200, n_valid=20, n_test=20, seed=1)
    c = write_synthetic_corpus(tmp_path / "c", n_train=200, n_valid=20, n_test=20, seed=2)
    assert set(a) == {"train", "valid", "test"}
    for split in a:
        for lang in (SOURCE_LANG, TARGET_LANG):
            assert read(a[split], lang) == read(b[split], lang)
    assert read(a["train"], SOURCE_LANG) != read(c["train"], SOURCE_LANG)


def test_splits_have_requested_sizes_lengths_and_no_shared_sentence(tmp_path):
    prefixes = write_synthetic_corpus(tmp_path, n_train=300, n_valid=40, n_test=50)
    sources = {split: read(prefix, SOURCE_LANG) for split, prefix in prefixes.items()}
    assert {split: len(lines) for split, lines in sources.items()} == {"train": 300, "valid": 40, "test": 50}
    everything = [line for lines in sources.values() for line in lines]
    assert len(set(everything)) == len(everything)
    for split, prefix in prefixes.items():
        for src, tgt in zip(sources[split], read(prefix, TARGET_LANG)):
            assert MIN_WORDS <= len(src.split()) <= MAX_WORDS
            assert len(src.split()) == len(tgt.split())


def test_target_is_the_word_for_word_translation_with_the_verb_last():
    to_tgt = {src: tgt for pairs in _LEXICON.values() for src, tgt in pairs}
    verbs = {src for src, _ in _LEXICON["verb"]}
    assert len(to_tgt) == len(set(to_tgt.values())), "the lexicon must be one-to-one"
    rng = random.Random(0)
    for _ in range(500):
        src, tgt = synthetic_pair(rng)
        src_words, tgt_words = src.split(), tgt.split()
        assert sorted(to_tgt[w] for w in src_words) == sorted(tgt_words)
        verb = [w for w in src_words if w in verbs]
        assert len(verb) == 1 and tgt_words[-1] == to_tgt[verb[0]]
