"""`admin-ds prepare`: layout, round trip, dropped lines, reuse of a model, and every bad input."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from admin_ds.cli.prepare import add_arguments, main
from admin_ds.data import ParallelDataset, PrepareConfig, Tokenizer, load_meta, prepare, write_synthetic_corpus
from admin_ds.errors import UserError

SRC = ["Guten Morgen.", "Wie geht es dir?", "", "Ich bin müde.", "Das ist ein sehr langer Satz " * 8, "Danke!"]
TGT = ["Good morning.", "How are you?", "Hello.", "", "This is a very long sentence " * 8, "Thank you!"]


def write_pair(prefix: Path, src_lines, tgt_lines, src="de", tgt="en"):
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.{src}").write_text("".join(f"{line}\n" for line in src_lines), encoding="utf-8")
    Path(f"{prefix}.{tgt}").write_text("".join(f"{line}\n" for line in tgt_lines), encoding="utf-8")
    return prefix


@pytest.fixture
def small_corpus(tmp_path):
    """train/valid/test prefixes of a tiny de-en corpus with one empty line per side and one long pair."""
    train = write_pair(tmp_path / "in" / "train", SRC * 5, TGT * 5)
    valid = write_pair(tmp_path / "in" / "valid", SRC, TGT)
    test = write_pair(tmp_path / "in" / "test", SRC[:2], TGT[:2])
    return train, valid, test


def config(corpus, out, **overrides):
    train, valid, test = corpus
    settings = dict(train_prefix=train, valid_prefix=valid, test_prefix=test, source_lang="de",
                    target_lang="en", out_dir=out, vocab_size=200, progress=False, workers=2)
    settings.update(overrides)
    return PrepareConfig(**settings)


def leftovers(parent: Path):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_layout_meta_and_round_trip(small_corpus, tmp_path):
    out = tmp_path / "data"
    meta = prepare(config(small_corpus, out, max_positions=30))
    names = {p.name for p in out.iterdir()}
    expected = {"meta.json", "spm.model"} | {f"{s}.{lang}.{e}" for s in ("train", "valid", "test")
                                             for lang in ("de", "en") for e in ("bin", "idx")}
    raw = {f"{s}.{lang}.txt" for s in ("valid", "test") for lang in ("de", "en")}  # references for BLEU
    assert names == expected | raw
    for split in ("valid", "test"):  # every line, dropped pairs too, byte for byte; named relative to DIR
        assert meta["raw"][split] == {"src": f"{split}.de.txt", "tgt": f"{split}.en.txt"}
        for lang in ("de", "en"):
            given = small_corpus[1].parent / f"{split}.{lang}"
            assert (out / f"{split}.{lang}.txt").read_bytes() == given.read_bytes()
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert meta["dtype"] == "uint8" and meta["vocab_size"]["src"] <= 200
    # Per split: 2 empty pairs (one per side) and 1 too-long pair dropped out of every 6 lines.
    assert meta["splits"]["train"] == {"lines": 30, "examples": 15, "src_tokens": meta["splits"]["train"]["src_tokens"],
                                       "tgt_tokens": meta["splits"]["train"]["tgt_tokens"],
                                       "dropped": {"empty": 10, "too_long": 5}}
    assert meta["splits"]["valid"]["dropped"] == {"empty": 2, "too_long": 1}
    assert meta["splits"]["test"]["examples"] == 2
    assert meta["dropped"] == {"empty": 12, "too_long": 6}
    assert not leftovers(tmp_path)

    info = load_meta(out)
    assert (info.source_lang, info.target_lang, info.special_ids.pad, info.special_ids.eos) == ("de", "en", 0, 3)
    assert info.split_sizes == {"train": 15, "valid": 3, "test": 2}
    assert info.raw_text == {split: (out / f"{split}.de.txt", out / f"{split}.en.txt") for split in ("valid", "test")}
    old_meta = {key: value for key, value in meta.items() if key != "raw"}  # prepared before "raw" existed
    (out / "meta.json").write_text(json.dumps(old_meta))
    assert load_meta(out).raw_text == {} and load_meta(out).split_sizes == info.split_sizes
    (out / "meta.json").write_text(json.dumps(meta))
    tokenizer = Tokenizer(info.src_spm_path)
    valid = ParallelDataset.load(out, "valid")
    kept = [(s, t) for s, t in zip(SRC, TGT) if s and t and len(s) < 100]
    assert len(valid) == len(kept) == 3
    for i, (src_text, tgt_text) in enumerate(kept):
        src_ids, tgt_ids = valid[i]
        assert tokenizer.decode(src_ids.tolist()) == src_text
        assert tokenizer.decode(tgt_ids.tolist()) == tgt_text
        assert valid.src_sizes[i] == len(src_ids) and valid.tgt_sizes[i] == len(tgt_ids)


def test_max_positions_counts_the_added_eos(tmp_path):
    prefix = write_pair(tmp_path / "train", ["a b c d e f g h"] * 4, ["x"] * 4)
    probe = prepare(PrepareConfig(train_prefix=prefix, valid_prefix=prefix, source_lang="de", target_lang="en",
                                  out_dir=tmp_path / "probe", vocab_size=30, progress=False))
    length = int(ParallelDataset.load(tmp_path / "probe", "train").src_sizes[0])
    for max_positions, kept in ((length + 1, 4), (length, 0)):
        meta = prepare(PrepareConfig(train_prefix=prefix, valid_prefix=prefix, source_lang="de", target_lang="en",
                                     out_dir=tmp_path / f"m{max_positions}", spm_model=tmp_path / "probe/spm.model",
                                     max_positions=max_positions, progress=False))
        assert meta["splits"]["valid"]["examples"] == kept
    assert probe["spm_trained"] and not meta["spm_trained"]


def test_reusing_a_model_gives_the_same_ids(small_corpus, tmp_path):
    first = prepare(config(small_corpus, tmp_path / "a"))
    second = prepare(config(small_corpus, tmp_path / "b", spm_model=tmp_path / "a" / "spm.model"))
    assert first["splits"] == second["splits"]
    for name in ("train.de.bin", "train.en.idx", "spm.model"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_separate_vocabularies(small_corpus, tmp_path):
    meta = prepare(config(small_corpus, tmp_path / "sep", separate_vocab=True, model_type="unigram"))
    assert meta["spm_model"] == {"src": "spm.de.model", "tgt": "spm.en.model"} and not meta["joint_vocab"]
    info = load_meta(tmp_path / "sep")
    assert info.src_spm_path.is_file() and info.tgt_spm_path.is_file() and info.src_spm_path != info.tgt_spm_path
    reused = prepare(config(small_corpus, tmp_path / "sep2", separate_vocab=True,
                            spm_model=info.src_spm_path, spm_model_tgt=info.tgt_spm_path))
    assert reused["vocab_size"] == meta["vocab_size"]
    assert (tmp_path / "sep/train.en.bin").read_bytes() == (tmp_path / "sep2/train.en.bin").read_bytes()


def test_cli_flags_and_summary(small_corpus, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    train, valid, _ = small_corpus
    args = parser.parse_args(["--train-prefix", str(train), "--valid-prefix", str(valid), "--source-lang", "de",
                              "--target-lang", "en", "--out", str(tmp_path / "cli"), "--vocab-size", "150",
                              "--workers", "1"])
    assert args.max_positions == 1024 and args.model_type == "bpe" and not args.force
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train: 20 of 30 pairs kept" in printed and "10 empty" in printed
    assert load_meta(tmp_path / "cli").split_sizes == {"train": 20, "valid": 4}


def test_force_replaces_only_a_prepared_dataset(small_corpus, tmp_path):
    out = tmp_path / "data"
    prepare(config(small_corpus, out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="already exists; pass --force"):
        prepare(config(small_corpus, out, vocab_size=100))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    meta = prepare(config(small_corpus, out, vocab_size=100, force=True))
    assert load_meta(out).src_vocab_size == meta["vocab_size"]["src"] <= 100
    assert not leftovers(tmp_path)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(UserError, match="not a prepared dataset"):
        prepare(config(small_corpus, precious, force=True))
    assert (precious / "thesis.tex").read_text() == "do not delete"


@pytest.mark.parametrize("case, message", [
    ("mismatch", r"train\.de has 30 lines but .*train\.en has 29"),
    ("missing", r"valid\.en does not exist \(from --valid-prefix\)"),
    ("utf8", r"test\.en: invalid UTF-8 on line 2 "),
    ("no_pairs", "no pair with text on both sides"),
    ("bad_model", "special ids"),
    ("tiny_vocab", "sentencepiece training failed: Vocabulary size is smaller than required_chars"),
])
def test_bad_inputs_fail_cleanly_and_write_nothing(small_corpus, tmp_path, case, message):
    train, valid, test = small_corpus
    overrides = {}
    if case == "mismatch":
        write_pair(train, SRC * 5, (TGT * 5)[:-1])
    elif case == "missing":
        Path(f"{valid}.en").unlink()
    elif case == "utf8":
        Path(f"{test}.en").write_bytes(b"Good morning.\nHow are \xff you?\n")
    elif case == "no_pairs":
        write_pair(train, ["a", ""], ["", "b"])
    elif case == "bad_model":
        overrides["spm_model"] = tmp_path / "other.model"
        import sentencepiece as spm
        spm.SentencePieceTrainer.train(input=f"{train}.de", model_prefix=str(tmp_path / "other"), vocab_size=40,
                                       hard_vocab_limit=False,
                                       minloglevel=2)
    elif case == "tiny_vocab":  # fails after the temporary output directory was created
        overrides["vocab_size"] = 6
    out = tmp_path / "out" / "data"
    with pytest.raises(UserError, match=message):
        prepare(config(small_corpus, out, **overrides))
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("overrides, message", [
    (dict(target_lang="de"), "must differ"),
    (dict(source_lang="d/e"), "plain language code"),
    (dict(model_type="char"), "--model-type"),
    (dict(max_positions=1), "--max-positions"),
    (dict(workers=0), "--workers"),
    (dict(spm_model_tgt="x.model"), "--spm-model-tgt needs --separate-vocab"),
    (dict(separate_vocab=True, spm_model="x.model"), "both --spm-model and --spm-model-tgt"),
])
def test_bad_settings_are_rejected_up_front(small_corpus, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        config(small_corpus, tmp_path / "out", **overrides)


def test_missing_model_file_and_missing_dataset(small_corpus, tmp_path):
    with pytest.raises(UserError, match="does not exist \\(from --spm-model\\)"):
        prepare(config(small_corpus, tmp_path / "out", spm_model=tmp_path / "nope.model"))
    with pytest.raises(UserError, match="does not exist"):
        load_meta(tmp_path / "never-prepared")
    with pytest.raises(UserError, match="not a prepared dataset"):
        load_meta(tmp_path)
    prepare(config(small_corpus, tmp_path / "ok"))
    with pytest.raises(UserError, match="no 'dev' split"):
        ParallelDataset.load(tmp_path / "ok", "dev")
    (tmp_path / "ok" / "train.de.idx").write_bytes(np.array([0, 5], dtype=np.int64).tobytes())
    with pytest.raises(UserError, match="corrupt"):
        ParallelDataset.load(tmp_path / "ok", "train")


def test_synthetic_corpus_prepares_without_drops(tmp_path):
    prefixes = write_synthetic_corpus(tmp_path / "toy", n_train=300, n_valid=20, n_test=20)
    meta = prepare(PrepareConfig(train_prefix=prefixes["train"], valid_prefix=prefixes["valid"],
                                 test_prefix=prefixes["test"], source_lang="src", target_lang="tgt",
                                 out_dir=tmp_path / "toy-data", vocab_size=500, progress=False))
    examples = {name: split["examples"] for name, split in meta["splits"].items()}
    assert examples == {"train": 300, "valid": 20, "test": 20}
    assert meta["dropped"] == {"empty": 0, "too_long": 0}
