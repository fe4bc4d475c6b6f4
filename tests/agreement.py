"""What two decoders of the same model may differ in, on any CPU.

Two engines (or two code paths: cached and full decoding, batched and alone, our layers and stock torch
layers) compute the same model with different kernels, and different kernels round differently: where two
hypotheses are within rounding of each other, each may pick another one. Asking for identical outputs
therefore passes on the CPU a test was written on and fails on the next. What stays true everywhere:

  - only a small share of lines differ (``max_share``);
  - where they differ, both outputs are near-ties under *our* model: their length-normalised scores
    (sum of log-probabilities, EOS counted, / len ** lenpen, as our beam search scores) agree within
    ``score_tol`` nats per token.

Measured on a 3+3-layer Admin model trained 400 updates on Tatoeba (tests/test_ctranslate2.py), 400 test
lines, beam 5, against CTranslate2 fp32: rounding-sized changes (our search in float64; every weight
times 1 + 1e-5 N(0, 1)) changed no line; weights times 1 + 1e-4 N(0, 1) changed 1 line, its gap 5e-5.
Real bugs: ω left at 1 changed 352 of 400 lines (median gap 0.47), positions shifted by one 205 of 400
(median gap 0.13), length penalty 0.6 instead of 1.0 67 of 400 (median gap 0.04). The share catches
each of these bugs by a wide margin; the score gap makes sure the lines that do differ are ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MAX_SHARE = 0.02  # at most 2% of lines may differ (at least one line is always allowed)
SCORE_TOL = 2e-3  # nats per token between two outputs of the same line


def model_score(model, source: Sequence[int], hypothesis: Sequence[int], lenpen: float = 1.0,
                banned: Sequence[int] = ()) -> float:
    """Our model's length-normalised score of ``hypothesis`` (ids without BOS and EOS) for ``source`` (ids
    with EOS): teacher-forced log_softmax over the whole vocabulary, as our beam search scores, in float64
    so that the scorer adds no rounding of its own. ``banned`` ids are removed before the log_softmax, as
    CTranslate2 suppresses tokens (our search masks after it)."""
    cfg = model.cfg
    target = list(hypothesis) + [cfg.eos_id]  # [T]
    with torch.no_grad():
        logits = model(torch.tensor([list(source)]), torch.tensor([[cfg.bos_id] + target[:-1]]))  # [1, T, V]
    logits = logits[0].double()  # [T, V]
    logits[:, list(banned)] = float("-inf")
    log_probs = torch.log_softmax(logits, dim=-1)  # [T, V]
    total = log_probs[torch.arange(len(target)), torch.tensor(target)].sum()
    return float(total) / len(target) ** lenpen


def assert_decoders_agree(ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]],
                          score: Callable[[int, Sequence[int]], float], what: str = "outputs",
                          max_share: float = MAX_SHARE, score_tol: float = SCORE_TOL) -> list[int]:
    """Assert the two decoders' best ids agree as far as rounding allows; return the lines that differ.

    ours, theirs: [lines] of id lists. score(i, ids): our model's length-normalised score of ids for line i
    (``model_score`` with that line's source and the decoding's length penalty).
    """
    assert len(ours) == len(theirs), f"{what}: {len(ours)} against {len(theirs)} lines"
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs)) if list(a) != list(b)]
    allowed = max(1, int(max_share * len(ours)))
    assert len(differing) <= allowed, (f"{what}: {len(differing)} of {len(ours)} lines differ (at most {allowed} "
                                       f"may, as rounding ties), first at line {differing[:1]}")
    for i in differing:
        gap = abs(score(i, ours[i]) - score(i, theirs[i]))
        assert gap <= score_tol, (f"{what}: line {i} differs and is no tie under our model: scores "
                                  f"{score(i, ours[i]):.5f} vs {score(i, theirs[i]):.5f} ({ours[i]} vs {theirs[i]})")
    return differing


def assert_ct2_scores_are_ours(model, ct2, atol: float = 1e-4) -> None:
    """CTranslate2's token log-probabilities of two fixed (source, target) pairs equal our model's (teacher
    forcing, log_softmax over the whole vocabulary): scoring involves no search, so no ties either.
    ct2: an admin_ds CT2Model of ``model``'s conversion."""
    src, tgt = [[5, 9, 12, 7, 3], [17, 4, 3]], [[8, 11, 6, 22, 3], [30, 9, 3]]
    pieces = ct2.src_pieces
    scored = ct2.translator.score_batch([[pieces[i] for i in s[:-1]] for s in src],
                                        [[pieces[i] for i in t[:-1]] for t in tgt])
    for s, t, result in zip(src, tgt, scored):
        with torch.no_grad():
            logits = model(torch.tensor([s]), torch.tensor([[model.cfg.bos_id] + t[:-1]]))  # [1, T, V]
        ours = torch.log_softmax(logits.float(), -1)[0, torch.arange(len(t)), torch.tensor(t)]
        assert torch.allclose(torch.tensor(result.log_probs), ours, atol=atol), (result.log_probs, ours)
