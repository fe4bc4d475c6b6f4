"""`prepare` streams: chunked output equals one-chunk output, late bad input leaves nothing, memory is bounded.

The bounded-memory test prepares two synthetic corpora 8x apart in size, each in a fresh process, and
compares their peak RSS above an import-only baseline.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from admin_ds.data import PrepareConfig, binarize, prepare, train_sentencepiece, write_synthetic_corpus
from admin_ds.data.textio import count_lines, iter_line_chunks, read_parallel_chunks
from admin_ds.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMALL, LARGE = 500_000, 4_000_000  # pairs, 8x apart (~1 min on a shared 2-core machine)
BLOCK = 5_000  # distinct synthetic pairs, repeated to make the big corpora


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small synthetic corpus (train/valid) and a 200-piece model trained on it once for the module."""
    root = tmp_path_factory.mktemp("stream")
    prefixes = write_synthetic_corpus(root / "text", n_train=BLOCK, n_valid=50, n_test=50, seed=3)
    model = train_sentencepiece([f"{prefixes['train']}.src", f"{prefixes['train']}.tgt"], root / "spm", 200)
    return prefixes, model


def settings(prefixes, model, out, **overrides):
    values = dict(train_prefix=prefixes["train"], valid_prefix=prefixes["valid"], source_lang="src",
                  target_lang="tgt", out_dir=out, spm_model=model, progress=False, workers=2)
    values.update(overrides)
    return PrepareConfig(**values)


def write_side(path: Path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_chunked_output_equals_one_chunk_output(toy, tmp_path, monkeypatch):
    prefixes, model = toy
    whole = prepare(settings(prefixes, model, tmp_path / "whole", max_positions=12))
    monkeypatch.setattr(binarize, "CHUNK_LINES", 7)  # many chunks, the last one partial
    chunked = prepare(settings(prefixes, model, tmp_path / "chunked", max_positions=12))
    assert chunked == whole and whole["dropped"]["too_long"] > 0
    for path in (tmp_path / "whole").iterdir():
        assert path.read_bytes() == (tmp_path / "chunked" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("extra_on", ["src", "tgt"])
def test_a_mismatch_late_in_the_stream_fails_with_both_counts_and_leaves_nothing(toy, tmp_path, monkeypatch,
                                                                                 extra_on):
    prefixes, model = toy
    lines = Path(f"{prefixes['train']}.src").read_text(encoding="utf-8").splitlines()[:95]
    short, long = (94, 95) if extra_on == "tgt" else (95, 94)
    write_side(tmp_path / "train.src", lines[:short])
    write_side(tmp_path / "train.tgt", lines[:long])
    monkeypatch.setattr(binarize, "CHUNK_LINES", 10)  # the mismatch shows in the tenth chunk
    out = tmp_path / "out" / "data"
    with pytest.raises(UserError, match=rf"train\.src has {short} lines but .*train\.tgt has {long}; line N"):
        prepare(settings({"train": tmp_path / "train", "valid": prefixes["valid"]}, model, out))
    assert not out.exists() and not list((tmp_path / "out").iterdir())


def test_invalid_utf8_late_in_the_stream_names_the_file_line(tmp_path):
    good = b"".join(b"line %d\n" % i for i in range(1, 57))
    (tmp_path / "c.de").write_bytes(good + b"bad \xff here\nlast\n")
    (tmp_path / "c.en").write_bytes(good + b"fine\nlast\n")
    with pytest.raises(UserError, match=rf"c\.de: invalid UTF-8 on line 57 \(byte {len(good) + 4}: "):
        list(read_parallel_chunks(tmp_path / "c", "de", "en", chunk_lines=10))


def test_chunks_keep_lines_bom_and_counts_of_read_lines(tmp_path):
    path = tmp_path / "x.de"
    path.write_bytes("\ufeffa\r\n\n  b \n\ufeffc\nlast".encode())
    chunks = list(iter_line_chunks(path, chunk_lines=2))
    assert [lines for lines, _ in chunks] == [["a", ""], ["b", "\ufeffc"], ["last"]]  # only the file's BOM goes
    assert sum(nbytes for _, nbytes in chunks) == path.stat().st_size
    assert count_lines(path) == 5
    (tmp_path / "empty.de").write_bytes(b"")
    assert count_lines(tmp_path / "empty.de") == 0 and not list(iter_line_chunks(tmp_path / "empty.de", 3))


def test_spm_sentences_bounds_and_reports_the_sample(toy, tmp_path, caplog):
    prefixes, _ = toy
    with caplog.at_level(logging.INFO, logger="admin_ds.data.prepare"):
        meta = prepare(settings(prefixes, None, tmp_path / "out", spm_sentences=300, vocab_size=150))
    assert f"training on 300 of {2 * BLOCK:,} sentences" in caplog.text and meta["spm_trained"]
    with pytest.raises(UserError, match="--spm-sentences must be at least 1"):
        settings(prefixes, None, tmp_path / "x", spm_sentences=0)


def test_progress_bar_shows_bytes_and_lines_per_second(toy, tmp_path, capsys):
    prefixes, model = toy
    prepare(settings(prefixes, model, tmp_path / "out", progress=True))
    bar = capsys.readouterr().err
    assert "B/s" in bar and "lines/s" in bar and f"{2 * (BLOCK + 50):,} lines" in bar


CHILD = """
import json, sys
from pathlib import Path
from admin_ds.data import PrepareConfig, prepare

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

try:  # forget the import's transient peak, so VmHWM measures prepare alone (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    pass
baseline = status("VmRSS:")
text, model, out = map(Path, sys.argv[1:4])
prepare(PrepareConfig(train_prefix=text / "train", valid_prefix=text / "valid", source_lang="src",
                      target_lang="tgt", out_dir=out, spm_model=model, progress=False, workers=2))
print(json.dumps({"baseline": baseline, "peak": status("VmHWM:")}))
"""


def repeated_corpus(prefixes, folder: Path, pairs: int) -> Path:
    """train = the toy train split repeated to `pairs` lines; valid = the toy valid split."""
    folder.mkdir()
    for lang in ("src", "tgt"):
        block = Path(f"{prefixes['train']}.{lang}").read_bytes()
        with open(folder / f"train.{lang}", "wb") as handle:
            for _ in range(pairs // BLOCK):
                handle.write(block)
        (folder / f"valid.{lang}").write_bytes(Path(f"{prefixes['valid']}.{lang}").read_bytes())
    return folder


def peak_above_import(prefixes, model, tmp_path: Path, pairs: int) -> int:
    text = repeated_corpus(prefixes, tmp_path / f"text{pairs}", pairs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", CHILD, str(text), str(model), str(tmp_path / f"bin{pairs}")],
                         capture_output=True, text=True, env=env, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    examples = json.loads((tmp_path / f"bin{pairs}" / "meta.json").read_text())["splits"]["train"]["examples"]
    assert examples == pairs
    for path in list(text.iterdir()) + list((tmp_path / f"bin{pairs}").iterdir()):
        path.unlink()  # the big corpora are gone before the next one is written
    return result["peak"] - result["baseline"]


def test_peak_memory_does_not_grow_with_the_corpus(toy, tmp_path):
    prefixes, model = toy
    small = peak_above_import(prefixes, model, tmp_path, SMALL)
    large = peak_above_import(prefixes, model, tmp_path, LARGE)
    mib = 2**20
    tolerance = max(0.10 * max(small, large), 6 * mib)  # 10%, or a few MiB of allocator noise
    assert abs(large - small) <= tolerance, (f"peak above import: {small / mib:.1f} MiB at {SMALL:,} pairs, "
                                             f"{large / mib:.1f} MiB at {LARGE:,} pairs")
