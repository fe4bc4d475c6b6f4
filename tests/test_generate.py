"""Beam search (admin_ds.generate): greedy equivalence, cache equivalence, scores, n-best, length controls."""

import math

import pytest
import torch
from agreement import assert_decoders_agree, model_score
from torch import nn

import admin_ds
from admin_ds.errors import UserError
from admin_ds.inference.beam import generate, length_cap, make_batch, max_lengths
from admin_ds.inference.config import DecodingConfig
from admin_ds.inference.ctranslate2_engine import decoding_cap

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, BOS, EOS = 0, 2, 3




def random_model(residual="admin", eos_bias=3.0, seed=0):
    """admin-tiny with random weights; an output bias on EOS makes hypotheses end at varied lengths."""
    torch.manual_seed(seed)
    model = admin_ds.build_model("admin-tiny", dropout=0.0, residual=residual).eval()
    proj = nn.Linear(model.cfg.d_model, model.cfg.tgt_vocab_size, bias=True)
    with torch.no_grad():
        proj.weight.copy_(model.output_proj.weight)
        proj.bias.zero_()
        proj.bias[EOS] = eos_bias
    model.output_proj = proj
    return model


@pytest.fixture(scope="module")
def model():
    return random_model()


def sources(n=8, seed=1, max_len=12):
    """n source rows of ids in [4, 64) of mixed lengths, each ending with EOS."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len, (n,), generator=gen).tolist()
    return [torch.randint(4, 64, (length,), generator=gen).tolist() + [EOS] for length in lengths]


def greedy_reference(model, src_row, max_len):
    """An independent greedy decoder: full forward passes, argmax, EOS forbidden at step 0."""
    src = torch.tensor([src_row])
    out = [BOS]
    total = 0.0
    with torch.no_grad():
        for step in range(max_len + 1):
            lprobs = torch.log_softmax(model(src, torch.tensor([out]))[0, -1].float(), dim=-1)
            lprobs[PAD] = lprobs[BOS] = float("-inf")
            if step == 0:
                lprobs[EOS] = float("-inf")
            if step == max_len:
                token = EOS
            else:
                token = int(lprobs.argmax())
            total += float(lprobs[token])
            if token == EOS:
                break
            out.append(token)
    return out[1:], total


@pytest.mark.parametrize("incremental", [True, False])
def test_beam1_equals_independent_greedy(model, incremental):
    rows = sources()
    hyps = generate(model, make_batch(rows, PAD), beam=1, max_len_a=0, max_len_b=15, incremental=incremental)
    reference = [greedy_reference(model, row, 15) for row in rows]
    # Full forward passes and the search's own path are two kernels: agreement up to rounding ties.
    differing = assert_decoders_agree([hyp.tokens for (hyp,) in hyps], [tokens for tokens, _ in reference],
                                      lambda i, ids: model_score(model, rows[i], ids), what="beam 1 vs greedy")
    lengths = set()
    for i, ((hyp,), (tokens, total)) in enumerate(zip(hyps, reference)):
        if i not in differing:
            assert hyp.raw_score == pytest.approx(total, abs=1e-4)
        lengths.add(len(tokens))
    assert len(lengths) > 2  # the fixture really produces varied lengths


@pytest.mark.parametrize("residual", ["admin", "pre-ln"])
def test_incremental_equals_full_recompute(residual):
    model = random_model(residual)
    src = make_batch(sources(10, seed=3), PAD)
    fast = generate(model, src, beam=4, nbest=4, lenpen=1.0, max_len_b=20, incremental=True)
    slow = generate(model, src, beam=4, nbest=4, lenpen=1.0, max_len_b=20, incremental=False)
    rows = sources(10, seed=3)
    differing = assert_decoders_agree([[h.tokens for h in hyps] for hyps in fast],
                                      [[h.tokens for h in hyps] for hyps in slow],
                                      lambda i, nbest: model_score(model, rows[i], nbest[0]), what="cached vs full")
    for i, (fast_hyps, slow_hyps) in enumerate(zip(fast, slow)):
        if i in differing:  # a rounding tie somewhere in the n-best list (the best ones tie: checked above)
            continue
        for a, b in zip(fast_hyps, slow_hyps):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            torch.testing.assert_close(a.positional_scores, b.positional_scores, atol=1e-5, rtol=0)


def test_scores_equal_forward_rescoring(model):
    rows = sources(6, seed=4)
    lenpen = 0.7
    hyps = generate(model, make_batch(rows, PAD), beam=3, nbest=3, lenpen=lenpen, max_len_b=20)
    with torch.no_grad():
        for row, sentence_hyps in zip(rows, hyps):
            for hyp in sentence_hyps:
                target = hyp.tokens + [EOS]
                logits = model(torch.tensor([row]), torch.tensor([[BOS] + hyp.tokens]))[0]  # [T, V]
                positional = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(target)[:, None])[:, 0]
                torch.testing.assert_close(hyp.positional_scores, positional, atol=1e-4, rtol=0)
                assert hyp.score == pytest.approx(float(positional.sum()) / len(target) ** lenpen, abs=1e-4)


def test_nbest_count_and_order(model):
    hyps = generate(model, make_batch(sources(), PAD), beam=5, nbest=3, max_len_b=20)
    for sentence_hyps in hyps:
        assert len(sentence_hyps) == 3
        scores = [h.score for h in sentence_hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in sentence_hyps}) == 3  # distinct hypotheses


def test_lenpen_reranks_the_same_finished_set(model):
    """The stopping rule ignores scores, so lenpen only re-ranks; a higher lenpen never picks a shorter best."""
    src = make_batch(sources(10, seed=5), PAD)
    short = generate(model, src, beam=5, nbest=5, lenpen=0.0, max_len_b=20)
    long = generate(model, src, beam=5, nbest=5, lenpen=2.0, max_len_b=20)
    changed = 0
    for a, b in zip(short, long):
        assert sorted(h.tokens for h in a) == sorted(h.tokens for h in b)
        assert len(b[0].tokens) >= len(a[0].tokens)
        changed += len(b[0].tokens) > len(a[0].tokens)
        for hyp in a:  # lenpen 0: the score is the plain sum
            assert hyp.score == pytest.approx(hyp.raw_score, abs=1e-4)
    assert changed > 0


def test_max_len_respected():
    model = random_model(eos_bias=-5.0)  # EOS almost never chosen: hypotheses run to the cap
    rows = sources(6, seed=6)
    src = make_batch(rows, PAD)
    for hyps in generate(model, src, beam=3, nbest=3, max_len_a=0, max_len_b=4):
        assert all(len(h.tokens) == 4 for h in hyps)
    hyps = generate(model, src, beam=2, max_len_a=1.0, max_len_b=1)
    for row, (hyp,) in zip(rows, hyps):
        assert len(hyp.tokens) == len(row) + 1  # src_len counts the source EOS
    caps = max_lengths(src, PAD, 1.2, 10, limit=12)
    assert caps.tolist() == [min(int(1.2 * len(r) + 10), 12) for r in rows]


@pytest.mark.parametrize("max_len_a, max_len_b", [(1.2, 10), (0.0, 4), (1.1, -3), (2.5, 0), (-1.0, 2)])
def test_both_engines_cap_a_sentence_by_the_one_rule(max_len_a, max_len_b):
    """Our search's caps (max_lengths over a padded batch) and the CTranslate2 engine's (decoding_cap of one
    source length) are beam.length_cap's: floor(a * src_len + b) within [1, max_positions - 1]."""
    max_positions = 24
    rows = [[5] * (n - 1) + [EOS] for n in range(1, 23)]  # src_len 1..22 with EOS
    ours = max_lengths(make_batch(rows, PAD), PAD, max_len_a, max_len_b, limit=max_positions - 1).tolist()
    decoding = DecodingConfig(max_len_a=max_len_a, max_len_b=max_len_b)
    theirs = [decoding_cap(len(row), decoding, max_positions) for row in rows]
    expected = [min(max(math.floor(max_len_a * len(row) + max_len_b), 1), max_positions - 1) for row in rows]
    assert ours == theirs == expected
    assert ours == [length_cap(len(row), max_len_a, max_len_b, limit=max_positions - 1) for row in rows]


def test_batched_equals_one_by_one(model):
    rows = sources(7, seed=7)
    batched = generate(model, make_batch(rows, PAD), beam=4, nbest=2, max_len_a=1.0, max_len_b=5)
    alone = [generate(model, make_batch([row], PAD), beam=4, nbest=2, max_len_a=1.0, max_len_b=5)[0] for row in rows]
    # Batch shapes change the kernels' blocking: agreement up to rounding ties, scores equal where tokens are.
    differing = assert_decoders_agree([[h.tokens for h in hyps] for hyps in batched],
                                      [[h.tokens for h in hyps] for hyps in alone],
                                      lambda i, nbest: model_score(model, rows[i], nbest[0]), what="batched vs alone")
    for i, (hyps, one) in enumerate(zip(batched, alone)):
        if i not in differing:
            assert [h.score for h in hyps] == pytest.approx([h.score for h in one], abs=1e-5)


def test_bad_arguments(model):
    src = make_batch(sources(2), PAD)
    with pytest.raises(UserError, match="nbest"):
        generate(model, src, beam=2, nbest=3)
    with pytest.raises(UserError, match="beam"):
        generate(model, src, beam=0)
    assert generate(model, src[:0], beam=2) == []
