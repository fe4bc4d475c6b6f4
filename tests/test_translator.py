"""admin_ds.Translator (both engines behind one class) and streaming `admin-ds translate --buffer-size`.

Our engine on a tiny random-weight model (fast); the CTranslate2 engine's own figures are in
tests/test_ctranslate2.py and tests/test_ct2_batching.py. Outputs of two batchings are compared as
tests/agreement.py allows (different batch shapes may round differently), never bit for bit.
"""

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from agreement import assert_decoders_agree, model_score
from toy_corpus import toy_sentences, train_toy_spm

import admin_ds
from admin_ds import cli
from admin_ds.checkpoints.exports import write_export
from admin_ds.errors import UserError
from admin_ds.inference.translate import load_tokenizer, translate_hypotheses
from admin_ds.inference.translator import Translator
from admin_ds.io import read_line_chunks

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
EOS = 3
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """admin-tiny with random weights nudged towards EOS (varied output lengths), exported with a 60-piece
    sentencepiece model beside it. Returns (export folder, the model)."""
    root = tmp_path_factory.mktemp("translator")
    train_toy_spm(root)
    torch.manual_seed(0)
    model = admin_ds.build_model("admin-tiny", dropout=0.0).eval()
    eos_row = model.output_proj.weight[EOS].detach()
    with torch.no_grad():
        model.decoder.layers[-1].ffn_residual.norm.bias.copy_(3.0 * eos_row / eos_row.dot(eos_row))
    write_export(model, root / "ckpt")
    shutil.copy(root / "spm.model", root / "ckpt" / "spm.model")
    return root / "ckpt", model


def child_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- the Python entry point ------------------------------------------------------------------------------
def test_translator_is_our_beam_search_and_gives_nbest_with_scores(export):
    ckpt, model = export
    translator = admin_ds.Translator(ckpt, beam=4, device="cpu")
    lines = toy_sentences(30, 1) + ["", "   "]
    tokenizer = load_tokenizer(ckpt / "spm.model")
    expected = translate_hypotheses(model, tokenizer, lines, beam=4, nbest=3)  # same engine, same batches
    assert translator.translate(lines) == [h[0][0] for h in expected]
    nbest = translator.translate_nbest(lines, nbest=3)
    assert nbest == expected
    assert all(len(h) == 3 and h[0][1] >= h[1][1] >= h[2][1] for h in nbest[:30])
    assert nbest[-1] == [("", 0.0)] * 3 and translator.translate([]) == []
    assert "beam=4" in repr(translator) and isinstance(translator, admin_ds.Translator)


def test_translator_refuses_bad_settings_in_one_line(export):
    ckpt, _ = export
    for kwargs, words in (({"engine": "marian"}, "unknown engine"), ({"beams": 5}, "unknown decoding setting"),
                          ({"beam": 0}, "--beam must be at least 1"), ({"threads": -1}, "--threads")):
        with pytest.raises(UserError, match=words):
            Translator(ckpt, **kwargs)
    with pytest.raises(UserError, match="nbest must be between 1 and the beam size 2"):
        Translator(ckpt, beam=2, device="cpu").translate_nbest(["the cat"], nbest=3)


def test_stream_of_chunks_agrees_with_one_call(export):
    """Chunks of 7 lines give what one call gives, up to rounding ties between batch shapes."""
    ckpt, model = export
    translator = Translator(ckpt, beam=3, device="cpu")
    lines = toy_sentences(40, 2)
    whole = translator.translate_nbest(lines)
    chunks = (lines[start: start + 7] for start in range(0, len(lines), 7))
    streamed = [h for chunk in translator.translate_stream(chunks) for h in chunk]
    tokenizer = load_tokenizer(ckpt / "spm.model")
    sources = [tokenizer.encode(line) + [EOS] for line in lines]
    assert_decoders_agree([tokenizer.encode(h[0][0]) for h in whole], [tokenizer.encode(h[0][0]) for h in streamed],
                          lambda i, ids: model_score(model, sources[i], ids), what="chunks of 7 against one call")


def test_line_chunks_of_a_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffeins\r\nzwei\n\ndrei\nvier".encode())  # BOM, CRLF, an empty line, no final newline
    assert list(read_line_chunks(str(path), "--input", 2)) == [["eins", "zwei"], ["", "drei"], ["vier"]]
    path.write_bytes(b"ok\n" * 5 + b"bad \xff\n")
    with pytest.raises(UserError, match="invalid UTF-8 on line 6"):
        list(read_line_chunks(str(path), "--input", 4))
    with pytest.raises(UserError, match="does not exist"):
        read_line_chunks(str(tmp_path / "missing"), "--input", 4)


# --- admin-ds translate as a stream ----------------------------------------------------------------------
def test_first_translation_arrives_before_stdin_is_closed(export):
    """A line typed into a running `admin-ds translate` comes back while its stdin is still open."""
    ckpt, _ = export
    proc = subprocess.Popen([sys.executable, "-m", "admin_ds", "translate", "--checkpoint", str(ckpt),
                             "--beam", "2", "--device", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env(), text=True, cwd=ROOT)
    try:
        expected = Translator(ckpt, beam=2, device="cpu").translate(["the big cat", "a red house"])
        for line, translation in zip(["the big cat", "a red house"], expected):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, f"no translation of {line!r} within 120 s while stdin stays open"
            assert proc.stdout.readline() == translation + "\n"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()


def test_file_output_appears_only_when_complete(export, tmp_path, capsys):
    ckpt, _ = export
    (tmp_path / "in.txt").write_text("\n".join(toy_sentences(25, 3)) + "\n")
    code = cli.main(["translate", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.txt"), "--output",
                     str(tmp_path / "out.txt"), "--buffer-size", "4", "--beam", "2", "--device", "cpu"])
    assert code == 0
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]  # no temporary file left
    capsys.readouterr()  # the first command's own log lines
    code = cli.main(["translate", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.txt"), "--buffer-size",
                     "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--buffer-size must be at least 1" in err and len(err.strip().splitlines()) == 1


MEMORY_CHILD = """
import json, sys
from pathlib import Path
from admin_ds import cli

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

try:  # forget the import's transient peak, so VmHWM measures the command alone (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    pass
baseline = status("VmRSS:")
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "baseline": baseline, "peak": status("VmHWM:")}), file=sys.stderr)
"""


def translate_peak(ckpt: Path, folder: Path, lines: int) -> tuple[int, float]:
    """(peak RSS above the imports in bytes, seconds) of `admin-ds translate` on ``lines`` short lines, greedy
    with outputs capped at 2 tokens (the model is not what is measured), output to stdout."""
    (folder / "in.txt").write_text("the cat\nred\n" * (lines // 2))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, "translate", "--checkpoint", str(ckpt), "--input",
                           str(folder / "in.txt"), "--beam", "1", "--max-len-a", "0", "--max-len-b", "2",
                           "--device", "cpu", "--buffer-size", "2000"],
                          capture_output=True, text=True, env=child_env(), check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    assert proc.stdout.count("\n") == lines
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["code"] == 0
    return result["peak"] - result["baseline"], seconds


STREAM_SMALL, STREAM_LARGE = 10_000, 100_000


def test_streaming_memory_does_not_grow_with_the_input(export, tmp_path):
    """Ten times the input, the same peak (a list of 100,000 lines and their hypotheses alone would
    add tens of MiB). docs/deploy.md has the 200,000-line figure."""
    ckpt, _ = export
    small, small_s = translate_peak(ckpt, tmp_path, STREAM_SMALL)
    large, large_s = translate_peak(ckpt, tmp_path, STREAM_LARGE)
    mib = 2**20
    print(f"peak above import: {small / mib:.1f} MiB at {STREAM_SMALL:,} lines ({small_s:.1f} s), "
          f"{large / mib:.1f} MiB at {STREAM_LARGE:,} lines ({large_s:.1f} s)")
    assert large - small <= max(0.10 * small, 6 * mib), (f"{small / mib:.1f} MiB at {STREAM_SMALL:,} lines, "
                                                         f"{large / mib:.1f} MiB at {STREAM_LARGE:,} lines")
