"""translate / evaluate / average-checkpoints: order, empty lines, errors, sacrebleu agreement, averaging."""

import io
import json
import random
import shutil
import sys

import pytest
import sacrebleu
import sentencepiece as spm
import torch

import admin_ds
from admin_ds import cli
from admin_ds.checkpoints.average import average_models
from admin_ds.checkpoints.exports import write_export
from admin_ds.checkpoints.rundir import find_spm
from admin_ds.data import PrepareConfig, prepare, token_batches
from admin_ds.errors import UserError
from admin_ds.inference.translate import load_tokenizer, translate_hypotheses, translate_lines

pytestmark = pytest.mark.usefixtures("one_thread")

EOS = 3
WORDS = "the a cat dog sees runs big small red blue house tree river eats sleeps and with".split()




def sentences(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def tiny_model(seed=0):
    """admin-tiny with random weights, nudged towards EOS (via the last LayerNorm's bias, which the tied
    output projection turns into +3 on EOS's logit) so that translations have varied lengths."""
    torch.manual_seed(seed)
    model = admin_ds.build_model("admin-tiny", dropout=0.0).eval()
    eos_row = model.output_proj.weight[EOS].detach()
    with torch.no_grad():
        model.decoder.layers[-1].ffn_residual.norm.bias.copy_(3.0 * eos_row / eos_row.dot(eos_row))
    return model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A sentencepiece model (60 pieces) and an fp32 export with spm.model beside it."""
    root = tmp_path_factory.mktemp("translate")
    (root / "corpus.txt").write_text("\n".join(sentences(300, 0)) + "\n")
    spm.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "spm"), vocab_size=60,
                                   model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   hard_vocab_limit=False, minloglevel=2)
    write_export(tiny_model(), root / "ckpt")
    shutil.copy(root / "spm.model", root / "ckpt" / "spm.model")
    return root


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *words):
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err


# --- translate -------------------------------------------------------------------------------------------
def test_token_batches_cover_all_within_budget():
    lengths = [5, 1, 9, 3, 3, 12, 7, 2]
    batches = token_batches(lengths, max_tokens=12)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 12


def test_translate_keeps_order_and_empty_lines(workdir, capsys):
    lines = sentences(30, 1)
    lines[3] = lines[17] = ""
    lines[9] = "   "
    (workdir / "in.txt").write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(capsys, "translate", "--checkpoint", workdir / "ckpt", "--input", workdir / "in.txt",
                           "--output", workdir / "out.txt", "--beam", 3, "--max-tokens", 24, "--device", "cpu")
    assert code == 0, err
    out = (workdir / "out.txt").read_text().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    model, tok = admin_ds.load_model(workdir / "ckpt"), load_tokenizer(workdir / "spm.model")
    for line, translation in zip(lines, out):
        if not line.strip():
            assert translation == ""
        else:  # each line translated on its own gives the same text: nothing was shuffled
            assert translation == translate_lines(model, tok, [line], beam=3)[0]
    assert len(set(out)) > 6  # the outputs differ from line to line, so a shuffle would show


def test_translate_stdin_stdout_and_nbest(workdir, capsys, monkeypatch):
    lines = ["the cat sees a dog", "", "red river"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode())))
    code, out, err = run_cli(capsys, "translate", "--checkpoint", workdir / "ckpt", "--beam", 4, "--nbest", 2,
                             "--spm", workdir / "spm.model")
    assert code == 0, err
    out_lines = out.split("\n")[:-1]
    assert len(out_lines) == 2 * len(lines) and out_lines[2:4] == ["", ""]
    model, tok = admin_ds.load_model(workdir / "ckpt"), load_tokenizer(workdir / "spm.model")
    expected = translate_hypotheses(model, tok, lines, beam=4, nbest=2)
    assert out_lines == [text for hyps in expected for text, _ in hyps]


def test_translate_errors(workdir, capsys):
    ckpt = workdir / "ckpt"
    (workdir / "ok.txt").write_text("the cat\n")
    code, _, err = run_cli(capsys, "translate", "--checkpoint", workdir / "nope", "--input", workdir / "ok.txt")
    assert_user_error(code, err, "checkpoint not found")
    code, _, err = run_cli(capsys, "translate", "--checkpoint", ckpt, "--input", workdir / "missing.txt")
    assert_user_error(code, err, "missing.txt", "does not exist")
    (workdir / "bad.txt").write_bytes(b"the cat\nbad \xff byte\n")
    code, _, err = run_cli(capsys, "translate", "--checkpoint", ckpt, "--input", workdir / "bad.txt")
    assert_user_error(code, err, "invalid UTF-8", "line 2")
    code, _, err = run_cli(capsys, "translate", "--checkpoint", ckpt, "--input", workdir / "ok.txt",
                           "--output", workdir / "no" / "dir" / "out.txt")
    assert_user_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "translate", "--checkpoint", ckpt, "--input", workdir / "ok.txt",
                           "--beam", 2, "--nbest", 3)
    assert_user_error(code, err, "nbest")


# --- evaluate --------------------------------------------------------------------------------------------
def test_evaluate_hyp_ref_equals_sacrebleu(workdir, capsys):
    refs = sentences(40, 2)
    hyps = [r if i % 3 else " ".join(reversed(r.split())) for i, r in enumerate(refs)]
    hyps[5] = ""
    (workdir / "hyp.txt").write_text("\n".join(hyps) + "\n")
    (workdir / "ref.txt").write_text("\n".join(refs) + "\n")
    code, out, err = run_cli(capsys, "evaluate", "--hyp", workdir / "hyp.txt", "--ref", workdir / "ref.txt",
                             "--output", workdir / "scores.json")
    assert code == 0, err
    result = json.loads(out)
    assert json.loads((workdir / "scores.json").read_text()) == result
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert 0 < result["bleu"] < 100 and result["n_sentences"] == 40
    assert result["signature"].startswith("nrefs:1|") and "tok:13a" in result["signature"]
    assert "nc:6" in result["chrf_signature"]


def test_evaluate_errors(workdir, capsys):
    (workdir / "h2.txt").write_text("a\nb\n")
    (workdir / "r3.txt").write_text("a\nb\nc\n")
    code, _, err = run_cli(capsys, "evaluate", "--hyp", workdir / "h2.txt", "--ref", workdir / "r3.txt")
    assert_user_error(code, err, "2 hypotheses but 3 references")
    code, _, err = run_cli(capsys, "evaluate", "--hyp", workdir / "h2.txt")
    assert_user_error(code, err, "--ref")
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", workdir / "ckpt")
    assert_user_error(code, err, "--data")


def test_evaluate_checkpoint_translates_then_scores(workdir, capsys):
    src, ref = sentences(12, 3), sentences(12, 4)
    (workdir / "src.txt").write_text("\n".join(src) + "\n")
    (workdir / "ref12.txt").write_text("\n".join(ref) + "\n")
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", workdir / "ckpt", "--src", workdir / "src.txt",
                             "--ref", workdir / "ref12.txt", "--beam", 2, "--write-hyp", workdir / "hyp12.txt")
    assert code == 0, err
    result = json.loads(out)
    hyps = (workdir / "hyp12.txt").read_text().split("\n")[:-1]
    model, tok = admin_ds.load_model(workdir / "ckpt"), load_tokenizer(workdir / "spm.model")
    assert hyps == translate_lines(model, tok, src, beam=2)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [ref]).score, abs=1e-9)
    assert result["n_sentences"] == 12 and result["text_from"] == "files"
    assert result["translate_seconds"] > 0
    # translate_seconds is rounded to the millisecond, so compare in seconds, not in sentences per second
    assert 12 / result["sentences_per_second"] == pytest.approx(result["translate_seconds"], abs=6e-4)


def make_data_dir(workdir, src, ref, raw):
    """A dataset from `admin-ds prepare` (reusing the test's sentencepiece model); without ``raw``, its
    meta.json is made to look like one written before `prepare` recorded the raw text."""
    text = workdir / ("text_raw" if raw else "text_bin")
    text.mkdir(exist_ok=True)
    for split, (xs, ys) in {"train": (sentences(20, 7), sentences(20, 8)), "valid": (src[:2], ref[:2]),
                            "test": (src, ref)}.items():
        (text / f"{split}.xx").write_text("\n".join(xs) + "\n")
        (text / f"{split}.yy").write_text("\n".join(ys) + "\n")
    data = workdir / ("data_raw" if raw else "data_bin")
    prepare(PrepareConfig(train_prefix=text / "train", valid_prefix=text / "valid", test_prefix=text / "test",
                          source_lang="xx", target_lang="yy", out_dir=data, spm_model=workdir / "spm.model",
                          workers=1, progress=False, force=True))
    if not raw:
        meta = json.loads((data / "meta.json").read_text())
        del meta["raw"]
        (data / "meta.json").write_text(json.dumps(meta))
    return data


@pytest.mark.parametrize("raw", [True, False])
def test_evaluate_data_split(workdir, capsys, raw):
    src, ref = sentences(8, 5), sentences(8, 6)
    src[2] = "the ZEBRA"  # an unknown piece: binarised text decodes it differently from the raw file
    data = make_data_dir(workdir, src, ref, raw)
    if raw:  # the references travel with the prepared folder
        data = shutil.move(data, workdir / "data_raw_moved")
        shutil.rmtree(workdir / "text_raw")
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", workdir / "ckpt", "--data", data,
                             "--split", "test", "--beam", 2)
    assert code == 0, err
    result = json.loads(out)
    assert result["text_from"] == ("raw" if raw else "binarised") and result["n_sentences"] == 8
    assert ("records no raw test text" in err) != raw  # the one-line note of the fallback
    model, tok = admin_ds.load_model(workdir / "ckpt"), load_tokenizer(workdir / "spm.model")
    sources = src if raw else [tok.decode(tok.encode(line)) for line in src]
    assert (sources[2] == "the ZEBRA") == raw
    hyps = translate_lines(model, tok, sources, beam=2)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [ref]).score, abs=1e-9)


# --- average-checkpoints ---------------------------------------------------------------------------------
def test_average_identical_models_is_the_model():
    model = tiny_model(1)
    averaged = average_models([model, model, model])
    for key, value in model.state_dict().items():
        assert torch.equal(averaged.state_dict()[key], value), key


def test_average_of_two_is_the_mean():
    a, b = tiny_model(1), tiny_model(2)
    averaged = average_models(iter([a, b]))
    for key, value in a.state_dict().items():
        torch.testing.assert_close(averaged.state_dict()[key], (value + b.state_dict()[key]) / 2)


def test_average_refuses_different_architectures():
    other = admin_ds.build_model("admin-tiny", decoder_layers=3)
    with pytest.raises(UserError, match="decoder_layers"):
        average_models([tiny_model(), other])


def test_average_cli_picks_highest_steps(tmp_path, capsys):
    models = {step: tiny_model(step) for step in (2, 10, 30)}
    for step, model in models.items():
        write_export(model, tmp_path / "run" / f"global_step{step}")
    code, _, err = run_cli(capsys, "average-checkpoints", "--save-dir", tmp_path / "run", "--last", 2,
                           "--output", tmp_path / "avg")
    assert code == 0, err
    averaged = admin_ds.load_model(tmp_path / "avg")
    config = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in config["averaged_from"]] == ["global_step10", "global_step30"]
    for key, value in models[10].state_dict().items():
        torch.testing.assert_close(averaged.state_dict()[key], (value + models[30].state_dict()[key]) / 2)
    code, _, err = run_cli(capsys, "average-checkpoints", "--save-dir", tmp_path / "run", "--last", 4,
                           "--output", tmp_path / "avg4")
    assert_user_error(code, err, "--last 4")
    code, _, err = run_cli(capsys, "average-checkpoints", "--inputs", tmp_path / "run" / "global_step2",
                           "--output", tmp_path / "avg")
    assert_user_error(code, err, "exists")


def test_spm_lookup_beside_checkpoints(workdir, tmp_path, capsys):
    assert find_spm(workdir / "ckpt") == (workdir / "ckpt" / "spm.model",) * 2  # spm.model beside it
    data = make_data_dir(workdir, sentences(4, 9), sentences(4, 10), raw=False)
    run = tmp_path / "run"
    write_export(tiny_model(), run / "global_step5")
    with pytest.raises(UserError, match="no sentencepiece model"):
        find_spm(run / "global_step5")
    (run / "train_config.json").write_text(json.dumps({"data": str(data)}))  # as `admin-ds train` writes it
    assert find_spm(run / "global_step5") == (data / "spm.model",) * 2
    code, _, err = run_cli(capsys, "average-checkpoints", "--save-dir", run, "--last", 1, "--output", tmp_path / "avg")
    assert code == 0, err
    shutil.rmtree(run)  # the average carries its own copy of the sentencepiece model, as convert's exports do
    assert find_spm(tmp_path / "avg") == (tmp_path / "avg" / "spm.model",) * 2
    assert (tmp_path / "avg" / "spm.model").read_bytes() == (data / "spm.model").read_bytes()
