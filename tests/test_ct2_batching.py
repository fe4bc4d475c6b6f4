"""The CTranslate2 engine through admin_ds.Translator: its batching and length caps, and `evaluate --engine`.

A random-weight admin-tiny (fast; its outputs mostly run to their length cap, which is what the cap rules
are about). Outputs of one engine with one batching are compared exactly; CTranslate2 against our search
is tests/test_ctranslate2.py's subject (as far as rounding allows).
"""

import json
import shutil

import pytest
import sacrebleu
import torch
from cli_util import run_cli
from toy_corpus import toy_sentences, train_toy_spm

import admin_ds
from admin_ds import cli
from admin_ds.checkpoints.convert import convert
from admin_ds.checkpoints.exports import write_export
from admin_ds.errors import UserError
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.translator import Translator

ctranslate2 = pytest.importorskip("ctranslate2", reason="the ctranslate2 package is not installed "
                                                        "(pip install ctranslate2; it is in the test extra)")
from admin_ds.inference.ctranslate2_engine import decoding_cap, hypotheses_ct2, workers_and_threads  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(folder with ckpt/ (our export) and ct2/ (its CTranslate2 conversion), corpus lines)."""
    root = tmp_path_factory.mktemp("ct2-batching")
    train_toy_spm(root)
    lines = toy_sentences(300, 0)
    torch.manual_seed(0)
    write_export(admin_ds.build_model("admin-tiny", dropout=0.0).eval(), root / "ckpt")
    shutil.copy(root / "spm.model", root / "ckpt" / "spm.model")
    convert(root / "ckpt", root / "ct2", format="ctranslate2")
    return root, lines


def test_sentence_caps_are_each_sentences_own_and_batch_caps_follow_the_batch(converted):
    """--caps sentence: no output is longer than its own cap int(1.2 * src_len + 10), as in our search;
    --caps batch: outputs may run to their batch's cap (the longest source's), and on this model whose
    outputs run to the cap some do: the documented difference (docs/deploy.md)."""
    root, lines = converted
    lines = lines[:60]
    translator = Translator(root / "ct2", "ctranslate2", beam=2, device="cpu", threads=1)
    model = translator._ct2
    source_lengths = [len(model.tokenizer.encode(line)) + 1 for line in lines]
    own = [decoding_cap(n, translator.decoding, model.max_positions) for n in source_lengths]
    by_sentence = hypotheses_ct2(model, lines, translator.decoding)
    at_cap = sum(len(h[0][0]) == cap for h, cap in zip(by_sentence, own))
    assert all(len(h[0][0]) <= cap for h, cap in zip(by_sentence, own))
    assert at_cap >= 10, f"only {at_cap} of {len(lines)} outputs reach their cap: the check below would be empty"
    batch = DecodingConfig(beam=2, caps="batch")  # 60 short lines: one batch under --max-tokens 4096
    by_batch = hypotheses_ct2(model, lines, batch)
    assert all(len(h[0][0]) <= max(own) for h in by_batch)
    longer = [i for i, (h, cap) in enumerate(zip(by_batch, own)) if len(h[0][0]) > cap]
    assert len(longer) >= 5, f"{len(longer)} outputs run past their own cap under --caps batch"
    for i, (a, b) in enumerate(zip(by_sentence, by_batch)):
        if len(b[0][0]) < own[i] and i not in longer:  # ended by EOS before any cap: the cap played no part
            assert a[0][0] == b[0][0], i


def test_workers_and_small_batches_keep_the_outputs(converted):
    """Several batches decoded in parallel (--workers 2), in input order, give what one worker gives on
    the same batches; and --caps sentence splits batches only where the cap changes."""
    root, lines = converted
    one = Translator(root / "ct2", "ctranslate2", beam=3, device="cpu", threads=1, workers=1, max_tokens=64)
    two = Translator(root / "ct2", "ctranslate2", beam=3, device="cpu", threads=1, workers=2, max_tokens=64)
    lines = lines[:80] + [""]
    first = one.translate_nbest(lines, nbest=2)
    assert first == two.translate_nbest(lines, nbest=2)  # same engine, same batches, one thread each
    assert first[-1] == [("", 0.0)] * 2 and len({h[0][0] for h in first}) > 20


def test_evaluate_engine_ctranslate2(converted, tmp_path, capsys):
    root, lines = converted
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("\n".join(lines[:30]) + "\n")
    ref.write_text("\n".join(lines[30:60]) + "\n")
    code = cli.main(["evaluate", "--checkpoint", str(root / "ct2"), "--engine", "ctranslate2", "--src", str(src),
                     "--ref", str(ref), "--beam", "2", "--device", "cpu", "--threads", "1",
                     "--write-hyp", str(tmp_path / "hyp.txt")])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    hyps = (tmp_path / "hyp.txt").read_text().splitlines()
    assert result["engine"] == "ctranslate2" and result["n_sentences"] == 30
    assert hyps == Translator(root / "ct2", "ctranslate2", beam=2, device="cpu", threads=1).translate(lines[:30])
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [lines[30:60]]).score)
    code = cli.main(["evaluate", "--checkpoint", str(root / "ckpt"), "--engine", "ctranslate2", "--src", str(src),
                     "--ref", str(ref)])
    err = capsys.readouterr().err
    assert code == 2 and "admin_ds_ctranslate2.json" in err and len(err.strip().splitlines()) == 1


def test_default_workers_fill_the_cores_at_one_thread_each():
    """--workers 0 (the default): inter_threads x intra_threads within the cores, one thread each unless
    --threads says; one worker on a GPU; a --workers given keeps --threads (0: CTranslate2's default)."""
    assert workers_and_threads(0, 0, "cpu", cores=16) == (16, 1)
    assert workers_and_threads(0, 4, "cpu", cores=16) == (4, 4)
    assert workers_and_threads(0, 3, "cpu", cores=2) == (1, 3)
    assert workers_and_threads(0, 0, "cuda", cores=16) == (1, 0)
    assert workers_and_threads(2, 0, "cpu", cores=16) == (2, 0)
    assert DecodingConfig().workers == 0 and DecodingConfig().caps == "sentence"


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_a_bad_cap_rule_or_worker_count_is_one_line_before_anything_loads(command, tmp_path, capsys):
    """The checkpoint does not exist: the flag is refused before anything would look at it."""
    missing, text = tmp_path / "no-model", tmp_path / "text.txt"
    text.write_text("ein satz\n")
    io = ["--input", text] if command == "translate" else ["--src", text, "--ref", text]
    for flag, value, words in (("--caps", "bogus", "invalid choice: 'bogus'"), ("--workers", "-1", "--workers")):
        code, _, err = run_cli(capsys, command, "--checkpoint", missing, "--engine", "ctranslate2", *io,
                               flag, value)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert str(missing) not in err  # refused for the flag, not for the checkpoint it never looked at
    with pytest.raises(UserError, match="--caps must be one of sentence, batch, got 'bogus'"):
        Translator(missing, "ctranslate2", caps="bogus")
