"""CTranslate2 export and engine with the real ctranslate2 package.

A model trained here on a Tatoeba de-en subset (Admin, so ω is far from 1 and must be folded) is
converted with ``admin-ds convert --format ctranslate2``; fp32 greedy and beam-5 outputs must agree with
the ids our beam search gives as far as rounding allows (tests/agreement.py: two engines' kernels round
differently on every CPU), int8 must keep BLEU within 0.5 of fp32, and bad input leaves OUT as it was.
"""

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import sacrebleu
import torch

import admin_ds
from admin_ds import cli
from admin_ds.checkpoints.convert import convert
from admin_ds.checkpoints.exports import write_export
from admin_ds.data import PrepareConfig, Tokenizer, prepare
from admin_ds.inference import beam as beam_module
from admin_ds.inference.beam import generate, make_batch
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.translate import load_translator, translate_with

ctranslate2 = pytest.importorskip("ctranslate2", reason="the ctranslate2 package is not installed "
                                                        "(pip install ctranslate2; it is in the test extra)")
from agreement import assert_ct2_scores_are_ours, assert_decoders_agree, model_score  # noqa: E402
from cli_util import run_cli  # noqa: E402
from toy_corpus import train_toy_spm  # noqa: E402

from admin_ds.inference.ctranslate2_engine import CT2Model, hypotheses_ct2, load_ct2, translate_ct2  # noqa: E402

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba-de-en"
TRAIN_PAIRS = 40_000
TRAIN_STEPS = 400
TEST_LINES = 400  # the fixed Tatoeba test subset: lines 0, 40, 80, ... of test.de / test.en
pytestmark = pytest.mark.usefixtures("one_thread")


def tatoeba_test_subset(side: str) -> list[str]:
    lines = (TATOEBA / f"test.{side}").read_text(encoding="utf-8").splitlines()
    return lines[:: len(lines) // TEST_LINES][:TEST_LINES]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3+3-layer d=128 Admin model (1.6M parameters) trained for TRAIN_STEPS updates on TRAIN_PAIRS Tatoeba
    pairs (BLEU about 5.5 on the test subset: weak, but sentence-specific output), and its fp32 and int8
    CTranslate2 conversions. Returns the folder holding run/, ct2-fp32/, ct2-int8/."""
    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"real data not found at {TATOEBA} (the shared data folder beside the checkout)")
    root = tmp_path_factory.mktemp("ct2")
    (root / "text").mkdir()
    for split, name, count in (("train", "train", TRAIN_PAIRS), ("dev", "dev", 300)):
        for side in ("de", "en"):
            lines = (TATOEBA / f"{name}.{side}").read_text(encoding="utf-8").splitlines()[:count]
            (root / "text" / f"{split}.{side}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(PrepareConfig(train_prefix=root / "text" / "train", valid_prefix=root / "text" / "dev",
                          source_lang="de", target_lang="en", out_dir=root / "data", vocab_size=2000,
                          max_positions=64, workers=1, progress=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # training is the slow part: all cores (decoding tests use one)
    assert cli.main(["train", "--data", str(root / "data"), "--save-dir", str(root / "run"), "--arch", "admin-tiny",
                     "--encoder-layers", "3", "--decoder-layers", "3", "--d-model", "128", "--nhead", "4",
                     "--ffn-dim", "512", "--max-tokens", "4096", "--max-steps", str(TRAIN_STEPS), "--lr", "2e-3",
                     "--warmup-updates", "100", "--log-interval", "100", "--save-interval", str(TRAIN_STEPS),
                     "--validate-interval", "0", "--no-tensorboard"]) == 0
    torch.set_num_threads(threads)
    for name, extra in (("ct2-fp32", []), ("ct2-int8", ["--quantization", "int8"])):
        assert cli.main(["convert", str(root / "run"), str(root / name), "--format", "ctranslate2", *extra]) == 0
    return root


def source_ids(model, tokenizer, lines):
    """Source ids as translate encodes them: cut to the positions, + EOS."""
    cfg = model.cfg
    return [tokenizer.encode(line.strip())[: cfg.max_positions - 1] + [cfg.eos_id] for line in lines]


def our_ids(model, tokenizer, lines, beam, lenpen=1.0):
    """Our beam search's best ids per line (one batch per 32 lines)."""
    sources = source_ids(model, tokenizer, lines)
    out = []
    for start in range(0, len(sources), 32):
        batch = make_batch(sources[start:start + 32], model.cfg.pad_id)
        out += [hyps[0].tokens for hyps in generate(model, batch, beam=beam, lenpen=lenpen,
                                                    vocab_limit=tokenizer.vocab_size)]
    return out


@pytest.mark.slow  # trains a model (minutes)
@pytest.mark.parametrize("beam", [1, 5])
def test_fp32_outputs_are_our_beam_search_ids(trained, beam):
    model = admin_ds.load_model(trained / "run")
    assert model.cfg.residual == "admin"
    omegas = [p for n, p in model.named_parameters() if "omega" in n]
    assert omegas and max(float((p - 1).abs().max()) for p in omegas) > 0.3, "ω should be far from 1"
    tokenizer = Tokenizer(trained / "ct2-fp32" / "spm.model")
    lines = tatoeba_test_subset("de")[:200]
    ours = our_ids(model, tokenizer, lines, beam)
    theirs = [hyps[0][0] for hyps in hypotheses_ct2(CT2Model(trained / "ct2-fp32", threads=1), lines,
                                                     DecodingConfig(beam=beam))]
    assert len({tuple(ids) for ids in ours}) > 0.8 * len(lines), "outputs should depend on the input"
    assert sum(len(ids) for ids in ours) > 3 * len(lines)
    sources = source_ids(model, tokenizer, lines)
    differing = assert_decoders_agree(ours, theirs, lambda i, ids: model_score(model, sources[i], ids),
                                      what=f"beam {beam}, ours against CTranslate2 fp32")
    print(f"beam {beam}: {len(differing)} of {len(lines)} lines differ (rounding ties)")


@pytest.mark.slow  # trains a model (minutes)
def test_the_agreement_check_catches_real_bugs(trained):
    """The tolerance above is no blanket: ω left unfolded or a wrong length penalty fail it."""
    model = admin_ds.load_model(trained / "run")
    tokenizer = Tokenizer(trained / "ct2-fp32" / "spm.model")
    lines = tatoeba_test_subset("de")[:200]
    sources = source_ids(model, tokenizer, lines)
    ct2 = CT2Model(trained / "ct2-fp32", threads=1)
    unfolded = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in unfolded.named_parameters():
            if "omega" in name:
                param.fill_(1.0)
    bugs = {"omega left at 1": (our_ids(unfolded, tokenizer, lines, 5), DecodingConfig(beam=5)),
            "length penalty 0.6 for 1.0": (our_ids(model, tokenizer, lines, 5, lenpen=0.6), DecodingConfig(beam=5))}
    for bug, (ours, decoding) in bugs.items():
        theirs = [hyps[0][0] for hyps in hypotheses_ct2(ct2, lines, decoding)]
        with pytest.raises(AssertionError, match="lines differ|no tie"):
            assert_decoders_agree(ours, theirs, lambda i, ids: model_score(model, sources[i], ids), what=bug)


@pytest.mark.slow  # trains a model (minutes)
def test_int8_bleu_within_half_a_point_of_fp32(trained):
    sources, refs = tatoeba_test_subset("de"), tatoeba_test_subset("en")
    bleu = {}
    for name in ("ct2-fp32", "ct2-int8"):
        hyps = translate_ct2(CT2Model(trained / name, threads=1), sources, DecodingConfig(beam=5))
        bleu[name] = sacrebleu.corpus_bleu([h[0][0] for h in hyps], [refs]).score
    print(f"BLEU on {len(sources)} Tatoeba test lines: fp32 {bleu['ct2-fp32']:.2f}, int8 {bleu['ct2-int8']:.2f}")
    assert bleu["ct2-fp32"] > 3.0, f"the model should translate somewhat: BLEU {bleu['ct2-fp32']:.2f}"
    assert abs(bleu["ct2-int8"] - bleu["ct2-fp32"]) <= 0.5
    info = json.loads((trained / "ct2-int8" / "admin_ds_ctranslate2.json").read_text())
    assert info["quantization"] == "int8"
    sizes = {name: (trained / name / "model.bin").stat().st_size for name in ("ct2-fp32", "ct2-int8")}
    assert sizes["ct2-int8"] < 0.5 * sizes["ct2-fp32"], sizes


@pytest.mark.slow  # trains a model (minutes)
def test_translate_engine_ctranslate2_cli(trained, tmp_path, capsys):
    lines = tatoeba_test_subset("de")[:30] + [""]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for engine, checkpoint in (("admin-ds", trained / "run"), ("ctranslate2", trained / "ct2-fp32")):
        code, _, err = run_cli(capsys, "translate", "--checkpoint", checkpoint, "--input", tmp_path / "in.txt",
                               "--output", tmp_path / f"{engine}.txt", "--engine", engine, "--device", "cpu")
        assert code == 0, err
    ours = (tmp_path / "admin-ds.txt").read_text(encoding="utf-8").splitlines()
    theirs = (tmp_path / "ctranslate2.txt").read_text(encoding="utf-8").splitlines()
    assert len(ours) == len(theirs) == len(lines) and ours[-1] == theirs[-1] == ""
    # Each engine's command writes what that engine's library call gives (same engine, same machine); that
    # the two engines agree as far as rounding allows is test_fp32_outputs_are_our_beam_search_ids' check.
    decoding = DecodingConfig(device="cpu")
    model, tokenizer, tgt_tokenizer = load_translator(str(trained / "run"), decoding, None)
    assert ours == [hyps[0][0] for hyps in translate_with(model, tokenizer, tgt_tokenizer, lines, decoding)]
    ct2 = load_ct2(str(trained / "ct2-fp32"), decoding)
    assert theirs == [hyps[0][0] for hyps in translate_ct2(ct2, lines, decoding)]
    assert len(set(ours[:-1])) > 20, "translations should depend on the input"


# --- the conversion itself on a random model (fast): ω folded, log-probabilities equal ----------------
@pytest.fixture(scope="module")
def random_export(tmp_path_factory):
    """admin-tiny with random ω in [1, 2] and a 60-piece sentencepiece model (smaller than the model's 64
    ids: the rest become suppressed placeholders)."""
    root = tmp_path_factory.mktemp("ct2-random")
    train_toy_spm(root)
    torch.manual_seed(0)
    model = admin_ds.build_model("admin-tiny", dropout=0.0).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "omega" in name:
                param.copy_(1 + torch.rand_like(param))
    write_export(model, root / "ckpt")
    shutil.copy(root / "spm.model", root / "ckpt" / "spm.model")
    return root, model


def test_scores_equal_our_log_probabilities(random_export, capsys):
    root, model = random_export
    code, out, err = run_cli(capsys, "convert", root / "ckpt", root / "ct2", "--format", "ctranslate2")
    assert code == 0, err
    ct2 = CT2Model(root / "ct2", threads=1)
    assert ct2.suppressed[:2] == [["<pad>"], ["<s>"]] and len(ct2.suppressed) == 2 + 64 - 60
    assert_ct2_scores_are_ours(model, ct2)


def test_every_quantization_loads_and_translates(random_export):
    """int8 / int8_float32 / float16 / bfloat16 files are smaller than float32 and decode (float16 and
    bfloat16 run as float32 on a CPU without fast kernels for them, CTranslate2 says on its log)."""
    root, _ = random_export
    lines = (root / "corpus.txt").read_text().splitlines()[:40]
    outputs, sizes = {}, {}
    for quantization in (None, "int8", "int8_float32", "float16", "bfloat16"):
        out = root / f"q-{quantization}"
        convert(root / "ckpt", out, format="ctranslate2", quantization=quantization)
        info = json.loads((out / "admin_ds_ctranslate2.json").read_text())
        assert info["quantization"] == (quantization or "float32") and info["source_residual"] == "admin"
        sizes[quantization] = (out / "model.bin").stat().st_size
        outputs[quantization] = [h[0][0] for h in hypotheses_ct2(CT2Model(out, threads=1), lines,
                                                                 DecodingConfig(beam=5))]
    for quantization, hyps in outputs.items():
        assert sum(a == b for a, b in zip(hyps, outputs[None])) >= 0.75 * len(lines), quantization
        assert quantization is None or sizes[quantization] < 0.8 * sizes[None], sizes


@pytest.mark.parametrize("beam, lenpen", [(1, 1.0), (5, 1.0), (5, 0.6)])
def test_decoding_matches_ours_up_to_where_masking_happens(random_export, monkeypatch, beam, lenpen):
    """A random model gives PAD and BOS real probability, so the one documented difference shows: our
    search bans them after its log-softmax, CTranslate2 before it. Renormalising ours after the ban (here
    only) must make the outputs agree up to rounding ties (tests/agreement.py), and the scores of the lines
    that agree equal: beam, length penalty, caps, min length and suppression map right."""
    root, model = random_export
    model = copy.deepcopy(model)
    with torch.no_grad():  # push towards EOS so that outputs have varied lengths below the caps
        eos_row = model.output_proj.weight[3].detach()
        model.decoder.layers[-1].ffn_residual.norm.bias.copy_(2.0 * eos_row / eos_row.dot(eos_row))
    write_export(model, root / f"eos-{beam}-{lenpen}")
    shutil.copy(root / "spm.model", root / f"eos-{beam}-{lenpen}" / "spm.model")
    convert_to = root / f"eos-{beam}-{lenpen}-ct2"
    assert cli.main(["convert", str(root / f"eos-{beam}-{lenpen}"), str(convert_to), "--format", "ctranslate2"]) == 0
    tokenizer = Tokenizer(root / "spm.model")
    lines = (root / "corpus.txt").read_text().splitlines()[:80]
    sources = [tokenizer.encode(line) + [3] for line in lines]
    theirs = hypotheses_ct2(CT2Model(convert_to, threads=1), lines, DecodingConfig(beam=beam, lenpen=lenpen))

    def ours():
        return generate(model, make_batch(sources, 0), beam=beam, lenpen=lenpen, vocab_limit=tokenizer.vocab_size)

    plain = [h[0].tokens for h in ours()]
    original = beam_module._next_log_probs
    monkeypatch.setattr(beam_module, "_next_log_probs",
                        lambda *args, **kwargs: torch.log_softmax(original(*args, **kwargs), dim=-1))
    renormalised = ours()
    banned = [model.cfg.pad_id, model.cfg.bos_id, *range(tokenizer.vocab_size, model.cfg.tgt_vocab_size)]
    differing = assert_decoders_agree([h[0].tokens for h in renormalised], [h[0][0] for h in theirs],
                                      lambda i, ids: model_score(model, sources[i], ids, lenpen, banned),
                                      what=f"beam {beam} lenpen {lenpen}, renormalised ours against CTranslate2")
    below_cap = 0
    for i, (source, mine, (_, score)) in enumerate(zip(sources, renormalised, (h[0] for h in theirs))):
        if i in differing:
            continue
        if len(mine[0].tokens) < int(1.2 * len(source) + 10):  # at the cap ours adds a forced EOS (deploy.md)
            assert abs(mine[0].score - score) < 1e-4
            below_cap += 1
    print(f"beam {beam} lenpen {lenpen}: {below_cap} of {len(lines)} end before their cap")
    assert below_cap >= 8
    assert len({tuple(ids) for ids in plain}) >= 20, "outputs should vary"
    if beam > 1:  # where hypotheses compete the difference shows (greedy's argmax does not move)
        assert plain != [h[0].tokens for h in renormalised]


def test_bad_input_is_one_line_and_writes_nothing(random_export, capsys):
    root, _ = random_export
    out = root / "existing"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("mine")
    cases = [(["--format", "ctranslate2"], out, "exists"),
             (["--format", "ctranslate2", "--quantization", "int4"], root / "new", "invalid choice"),
             (["--quantization", "int8"], root / "new", "only applies to --format ctranslate2")]
    for flags, target, words in cases:
        code, _, err = run_cli(capsys, "convert", root / "ckpt", target, *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert words in err, err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert not (root / "new").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary folder may stay behind"
    code, _, err = run_cli(capsys, "translate", "--checkpoint", root / "ckpt", "--engine", "ctranslate2",
                           "--input", root / "corpus.txt", "--output", root / "out.txt")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "admin_ds_ctranslate2.json" in err, err
    assert not (root / "out.txt").exists()
