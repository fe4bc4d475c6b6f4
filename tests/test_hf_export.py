"""🤗 transformers export (``admin-ds convert --format hf``) with the real transformers package.

A tiny Admin model trained 300 updates on the synthetic corpus, and random-weight models with random ω,
are converted and loaded with transformers only (AutoModelForSeq2SeqLM, AutoTokenizer): logits equal ours,
beam search agrees with ours as far as rounding allows (tests/agreement.py), a save_pretrained /
from_pretrained round trip changes nothing, and models that cannot be exported are refused in one line.
"""

import json
import random
import shutil
import sys

import pytest
import sentencepiece as spm
import torch
from agreement import assert_decoders_agree, model_score
from cli_util import run_cli
from toy_corpus import train_toy_spm

import admin_ds
from admin_ds import cli
from admin_ds.checkpoints.exports import write_export
from admin_ds.data import Tokenizer
from admin_ds.inference.beam import generate, make_batch

transformers = pytest.importorskip("transformers", reason="the transformers package is not installed "
                                                          "(pip install 'admin-ds[hf]'; it is in the test extra)")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]
LINES = 60


def load_hf(path):
    return transformers.AutoModelForSeq2SeqLM.from_pretrained(path).eval()


def hf_logits(hf, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """transformers' logits [B, T, V] for right-padded sources and decoder inputs (PAD = 0)."""
    with torch.no_grad():
        return hf(input_ids=src, attention_mask=src.ne(0), decoder_input_ids=tgt_in,
                  decoder_attention_mask=tgt_in.ne(0)).logits


def max_diff_on_tokens(ours: torch.Tensor, theirs: torch.Tensor, tgt_in: torch.Tensor) -> float:
    """Largest |difference| over the non-padding target positions."""
    return float((ours - theirs).abs()[tgt_in.ne(0)].max())


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    """admin-tiny trained 300 updates on the synthetic corpus (seconds), and its transformers export."""
    root = tmp_path_factory.mktemp("hf")
    assert cli.main(["train", "--data", str(synthetic_data), "--save-dir", str(root / "run"), "--arch", "admin-tiny",
                     "--max-tokens", "600", "--max-steps", "300", "--lr", "3e-3", "--warmup-updates", "10",
                     "--log-interval", "20", "--save-interval", "300", "--validate-interval", "0",
                     "--no-tensorboard"]) == 0
    text = synthetic_data.parent / "text"
    assert cli.main(["evaluate", "--checkpoint", str(root / "run"), "--src", str(text / "test.src"), "--ref",
                     str(text / "test.tgt"), "--device", "cpu", "--output", str(root / "eval.json")]) == 0
    assert cli.main(["convert", str(root / "run"), str(root / "hf"), "--format", "hf", "--evaluation",
                     str(root / "eval.json")]) == 0
    model = admin_ds.load_model(root / "run")
    tokenizer = Tokenizer(root / "hf" / "source.spm")
    test = (synthetic_data.parent / "text" / "test.src").read_text(encoding="utf-8").splitlines()[:LINES]
    refs = (synthetic_data.parent / "text" / "test.tgt").read_text(encoding="utf-8").splitlines()[:LINES]
    return root, model, tokenizer, test, refs


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A 60-piece sentencepiece model (smaller than admin-tiny's 64 ids: the rest must be suppressed)."""
    return train_toy_spm(tmp_path_factory.mktemp("hf-spm"))


def random_checkpoint(root, spm_path, residual="admin", **overrides):
    """admin-tiny with random weights (and random ω in [1, 2] for Admin) as an fp32 export with spm.model."""
    torch.manual_seed(0)
    model = admin_ds.build_model("admin-tiny", dropout=0.0, residual=residual, **overrides).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "omega" in name:
                param.copy_(1 + torch.rand_like(param))
    write_export(model, root / f"ckpt-{residual}")
    shutil.copy(spm_path, root / f"ckpt-{residual}" / "spm.model")
    return root / f"ckpt-{residual}", model


def test_logits_equal_ours_on_real_batches(trained):
    root, model, tokenizer, test, refs = trained
    hf = load_hf(root / "hf")
    assert type(hf).__name__ == "FSMTForConditionalGeneration"
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "hf")
    batch = hf_tok(test[:32], return_tensors="pt", padding=True)
    sources = [tokenizer.encode(line) + [3] for line in test[:32]]
    assert torch.equal(batch.input_ids, make_batch(sources, 0)), "the tokenizer must give our ids, EOS appended"
    tgt_in = make_batch([[2] + tokenizer.encode(line) for line in refs[:32]], 0)
    with torch.no_grad():
        ours = model(batch.input_ids, tgt_in)
    diff = max_diff_on_tokens(ours, hf_logits(hf, batch.input_ids, tgt_in), tgt_in)
    print(f"trained admin-tiny, 32 test lines: max |logit difference| {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("residual", ["admin", "deepnorm", "post-ln"])
def test_folded_models_are_exact_and_survive_a_round_trip(spm_model, tmp_path, residual):
    """Random ω (Admin) or α (DeepNorm) folded into the weights, ω_1 into the stored position tables."""
    ckpt, model = random_checkpoint(tmp_path, spm_model, residual)
    assert cli.main(["convert", str(ckpt), str(tmp_path / "hf"), "--format", "hf"]) == 0
    hf = load_hf(tmp_path / "hf")
    tokenizer = Tokenizer(spm_model)
    lines = ["the cat sees a dog", "big red house", "a small blue river with a tree and a dog eats"]
    src = make_batch([tokenizer.encode(line) + [3] for line in lines], 0)
    tgt_in = make_batch([[2, 8, 11, 6, 22, 9], [2, 30], [2, 5, 5, 7]], 0)
    with torch.no_grad():
        ours = model(src, tgt_in)
    theirs = hf_logits(hf, src, tgt_in)
    assert max_diff_on_tokens(ours, theirs, tgt_in) < 1e-4
    hf.save_pretrained(tmp_path / "resaved")
    again = load_hf(tmp_path / "resaved")
    for name in ("encoder", "decoder"):  # our table with ω_1 in it, not FSMT's recomputed sinusoids
        assert torch.equal(getattr(again.model, name).embed_positions.weight,
                           getattr(hf.model, name).embed_positions.weight)
    assert torch.equal(hf_logits(again, src, tgt_in), theirs), "a round trip in transformers must change nothing"


def test_separate_vocabularies(spm_model, tmp_path):
    """Source and target sentencepiece models of their own: vocab.json and target_vocab.json, the target
    model decodes, and the target's missing ids are suppressed."""
    words = "le la chat chien voit court grand petit rouge bleu maison arbre mange dort et avec".split()
    rng = random.Random(1)
    (tmp_path / "tgt.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
                                                for _ in range(300)) + "\n")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "tgt.txt"), model_prefix=str(tmp_path / "tgt"),
                                   vocab_size=50, model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   hard_vocab_limit=False, minloglevel=2)
    torch.manual_seed(0)
    model = admin_ds.build_model("admin-tiny", dropout=0.0, share_all_embeddings=False).eval()
    write_export(model, tmp_path / "ckpt", extra={"spm_model": {"src": "spm.src.model", "tgt": "spm.tgt.model"}})
    shutil.copy(spm_model, tmp_path / "ckpt" / "spm.src.model")
    shutil.copy(tmp_path / "tgt.model", tmp_path / "ckpt" / "spm.tgt.model")
    assert cli.main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert (tmp_path / "hf" / "target_vocab.json").is_file()
    src_tok, tgt_tok = Tokenizer(spm_model), Tokenizer(tmp_path / "tgt.model")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("the big cat").input_ids == src_tok.encode("the big cat") + [3]
    ids = tgt_tok.encode("le grand chat dort")
    assert hf_tok.decode(ids + [3], skip_special_tokens=True) == tgt_tok.decode(ids) == "le grand chat dort"
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == [0, 2] + list(range(50, 64))
    src = make_batch([src_tok.encode("the big cat") + [3]], 0)
    tgt_in = torch.tensor([[2] + ids])
    with torch.no_grad():
        ours = model(src, tgt_in)
    assert max_diff_on_tokens(ours, hf_logits(load_hf(tmp_path / "hf"), src, tgt_in), tgt_in) < 1e-4


@pytest.mark.parametrize("lenpen", [1.0, 0.6])
def test_generate_beam5_agrees_with_our_beam_search(trained, lenpen):
    """Per line, ``max_length`` = decoder start + our cap int(1.2 * src_len + 10) + the forced EOS, as
    deploy.md says."""
    root, model, tokenizer, test, _ = trained
    hf = load_hf(root / "hf")
    sources = [tokenizer.encode(line) + [3] for line in test]
    ours = [h[0].tokens for h in generate(model, make_batch(sources, 0), beam=5, lenpen=lenpen,
                                          vocab_limit=tokenizer.vocab_size)]
    theirs = []
    for source in sources:
        with torch.no_grad():
            out = hf.generate(torch.tensor([source]), num_beams=5, length_penalty=lenpen,
                              max_length=int(1.2 * len(source) + 10) + 2)[0].tolist()
        assert out[0] == 2 and 3 in out, out
        theirs.append(out[1:out.index(3)])
    assert len({tuple(ids) for ids in ours}) > 0.8 * len(test), "outputs should depend on the input"
    below_cap = sum(len(ids) < int(1.2 * len(s) + 10) for ids, s in zip(ours, sources))
    assert below_cap > 0.8 * len(test), "most outputs should end with EOS before the cap"
    differing = assert_decoders_agree(ours, theirs, lambda i, ids: model_score(model, sources[i], ids, lenpen),
                                      what=f"transformers beam 5, lenpen {lenpen}")
    print(f"lenpen {lenpen}: {len(differing)} of {len(test)} lines differ (near-ties)")
    # One padded batch with one cap for all (transformers' only kind): the encoder's padding mask holds.
    batch = make_batch(sources, 0)
    ours = [h[0].tokens for h in generate(model, batch, beam=5, lenpen=lenpen, max_len_a=0, max_len_b=30,
                                          vocab_limit=tokenizer.vocab_size)]
    with torch.no_grad():
        out = hf.generate(batch, attention_mask=batch.ne(0), num_beams=5, length_penalty=lenpen, max_length=32)
    theirs = [row[1:row.index(3)] for row in out.tolist()]
    assert_decoders_agree(ours, theirs, lambda i, ids: model_score(model, sources[i], ids, lenpen),
                          what=f"transformers beam 5 batched, lenpen {lenpen}")


def test_tokenizer_generation_config_and_text(trained):
    root, model, tokenizer, test, _ = trained
    generation = json.loads((root / "hf" / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"], generation["early_stopping"]) == (5, 1.0, True)
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (2, 3, 0)
    assert generation["decoder_start_token_id"] == 2 and generation["forced_eos_token_id"] == 3
    assert generation["suppress_tokens"] == [0, 2] + list(range(tokenizer.vocab_size, model.cfg.tgt_vocab_size))
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "hf")
    hf = load_hf(root / "hf")
    batch = hf_tok(test[:8], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf.generate(**batch)  # every setting from generation_config.json
    texts = hf_tok.batch_decode(out, skip_special_tokens=True)
    assert all(isinstance(t, str) and t.strip() for t in texts), texts
    for ids, text in zip(out.tolist(), texts):
        ids = [i for i in ids[1:] if i not in (0, 3)]
        assert text == tokenizer.decode(ids), "MarianTokenizer must decode as our sentencepiece model does"


def test_pipeline_translation_returns_text(trained):
    root, _, _, test, _ = trained
    try:
        translate = transformers.pipeline("translation", model=str(root / "hf"))
    except KeyError as err:  # transformers 5 removed the task; AutoModelForSeq2SeqLM + generate still work
        pytest.skip(f"transformers {transformers.__version__} has no translation pipeline ({str(err)[:60]}...)")
    out = translate(test[:3])
    assert [bool(item["translation_text"].strip()) for item in out] == [True] * 3


def test_model_card_and_files(trained):
    root = trained[0]
    names = {p.name for p in (root / "hf").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json",
            "tokenizer_config.json", "README.md", "admin_ds_hf.json"} <= names
    card = (root / "hf" / "README.md").read_text(encoding="utf-8")
    bleu = json.loads((root / "eval.json").read_text())["bleu"]
    for words in ("language: [src, tgt]", "pipeline_tag: translation", "Admin", "2 encoder and 2 decoder layers",
                  "updates: 300", f"BLEU {bleu:.2f}", "on 60 sentences", "sacrebleu signature", "admin-ds"):
        assert words in card, words
    info = json.loads((root / "hf" / "admin_ds_hf.json").read_text())
    assert info["source_residual"] == "admin" and info["class"] == "FSMTForConditionalGeneration"


def test_refusals_are_one_line_and_leave_nothing(spm_model, tmp_path, capsys, monkeypatch):
    admin, _ = random_checkpoint(tmp_path, spm_model)
    pre_ln, _ = random_checkpoint(tmp_path, spm_model, "pre-ln")
    eps, _ = random_checkpoint(tmp_path, spm_model, "post-ln", layer_norm_eps=1e-6)
    no_spm = tmp_path / "no-spm"
    shutil.copytree(admin, no_spm)
    (no_spm / "spm.model").unlink()
    (tmp_path / "existing").mkdir()
    cases = [(pre_ln, "out", [], "Pre-LN"), (eps, "out", [], "layer_norm_eps"), (no_spm, "out", [], "sentencepiece"),
             (admin, "existing", [], "exists"), (admin, "out", ["--quantization", "int8"], "--format ctranslate2"),
             (admin, "out", ["--evaluation", spm_model], "not valid JSON")]
    for ckpt, out, flags, words in cases:
        code, _, err = run_cli(capsys, "convert", ckpt, tmp_path / out, "--format", "hf", *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert words in err, err
    code, _, err = run_cli(capsys, "convert", admin, tmp_path / "out", "--evaluation", tmp_path / "eval.json")
    assert code == 2 and "--evaluation only applies to --format hf" in err, err
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    code, _, err = run_cli(capsys, "convert", admin, tmp_path / "out", "--format", "hf")
    assert code == 2 and "pip install 'admin-ds[hf]'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and list((tmp_path / "existing").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder may stay behind"
