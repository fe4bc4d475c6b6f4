"""Beam search for a TranslationModel, with or without the decoder's key/value cache.

Semantics follow fairseq's SequenceGenerator:
  - a hypothesis' running score is the sum of its tokens' log-probabilities (log_softmax of the logits,
    never renormalised after masking);
  - a finished hypothesis (one that chose EOS) scores sum / len ** lenpen, where len counts the generated
    tokens including EOS;
  - each sentence may generate at most max_len = int(max_len_a * src_len + max_len_b) tokens before EOS
    (src_len counts its non-pad source tokens, EOS included) -- per sentence, so that a sentence's output
    does not depend on which other sentences share its batch;
  - stopping rule (fairseq's simple one): a sentence is finished once ``beam`` hypotheses have ended with
    EOS, or when it reaches max_len (EOS is then forced on every live hypothesis). We do not keep
    searching for a live hypothesis that might still beat the finished ones.

Each step ranks the 2 * beam best (hypothesis, token) extensions of every sentence: EOS candidates among
the first ``beam`` are finalised, and the first ``beam`` non-EOS candidates continue. ``beam=1`` is greedy
search. Finished sentences leave the batch, so later steps only compute what is still alive.

Shape legend: B sentences, K beam, N = B * K hypothesis rows, S source time, t decoded steps, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from admin_ds.errors import UserError
from admin_ds.model import DecoderCache, EncoderOut, TranslationModel


@dataclass
class Hypothesis:
    """One finished translation.

    tokens: generated ids without BOS and without the final EOS.
    score: length-normalised score, sum(positional_scores) / (len(tokens) + 1) ** lenpen.
    positional_scores: [len(tokens) + 1] log-probability of every generated token, EOS last.
    """

    tokens: list[int]
    score: float
    positional_scores: torch.Tensor

    @property
    def raw_score(self) -> float:
        """The unnormalised sum of log-probabilities."""
        return float(self.positional_scores.sum())


def length_cap(src_len: int, max_len_a: float, max_len_b: int, limit: int, min_len: int = 1) -> int:
    """The cap on one sentence's generated tokens (EOS not counted): floor(a * src_len + b), raised to
    ``min_len`` and then lowered to ``limit``; ``src_len`` counts the source's tokens with its EOS. The one
    statement of the rule: our search (``max_lengths``) and the CTranslate2 engine both call it."""
    return min(max(math.floor(max_len_a * src_len + max_len_b), min_len), limit)


def max_lengths(src_tokens: torch.Tensor, pad_id: int, max_len_a: float, max_len_b: int, limit: int,
                min_len: int = 1) -> torch.Tensor:
    """``length_cap`` of every sentence of ``src_tokens`` [B, S] (right-padded with ``pad_id``): [B] long,
    on the CPU (the search keeps its bookkeeping there)."""
    src_len = src_tokens.ne(pad_id).sum(dim=1).tolist()  # [B]
    return torch.tensor([length_cap(n, max_len_a, max_len_b, limit, min_len) for n in src_len], dtype=torch.long)


@dataclass
class _Search:
    """The live part of a beam search. B' live sentences, N = B' * K hypothesis rows (sentence b owns rows
    b*K .. b*K+K-1). Bookkeeping of live sentences stays on the CPU, so a GPU step synchronises once."""

    sent_ids: list[int]  # [B'] original index of each live sentence
    sent_max_len: list[int]  # [B'] cap on generated tokens (EOS not counted)
    tokens: torch.Tensor  # [N, t + 1] BOS + tokens so far
    step_lprobs: torch.Tensor  # [N, t] log-prob of every token so far
    scores: torch.Tensor  # [N] running sum of log-probs
    encoder_out: EncoderOut  # rows follow the hypotheses
    cache: Optional[DecoderCache]
    finished: list[list[Hypothesis]]  # [B] per original sentence
    eos_id: int
    step: int = 0

    @property
    def live(self) -> int:
        return len(self.sent_ids)


@dataclass
class _Candidates:
    """The 2K best (hypothesis, token) extensions of every live sentence, best first: [B', 2K] each."""

    scores: torch.Tensor
    rows: torch.Tensor  # row in [N] that the candidate extends
    tokens: torch.Tensor
    is_eos: torch.Tensor


@torch.no_grad()
def generate(model: TranslationModel, src_tokens: torch.Tensor, beam: int = 5, lenpen: float = 1.0,
             max_len_a: float = 1.2, max_len_b: int = 10, nbest: int = 1, min_len: int = 1,
             incremental: bool = True, vocab_limit: Optional[int] = None) -> list[list[Hypothesis]]:
    """Beam search over a batch of source sentences.

    Args:
        model: the translation model (put it in eval mode: dropout stays as the module says).
        src_tokens: [B, S] LongTensor, right-padded with the model's pad id, each row ending with EOS,
            on the model's device.
        beam: beam size K (1 = greedy search).
        lenpen: length penalty exponent; > 1 favours longer, < 1 shorter translations.
        max_len_a, max_len_b: a sentence generates at most int(a * src_len + b) tokens before EOS.
        nbest: how many finished hypotheses to return per sentence (<= beam), best first.
        min_len: fewest tokens before EOS may be chosen.
        incremental: True feeds only the newest token and keeps keys/values in a DecoderCache;
            False recomputes the whole prefix every step. Both give the same hypotheses and scores.
        vocab_limit: only ids below this are generated (a tokenizer smaller than the model's vocabulary
            cannot decode the rest); None allows the whole vocabulary.

    Returns:
        one list per input row, in input order, of ``nbest`` Hypothesis sorted by score, best first.
    """
    _check_search_args(beam, nbest, min_len)
    if src_tokens.size(0) == 0:
        return []
    search = _start(model, src_tokens, beam, max_len_a, max_len_b, min_len, incremental)
    while True:
        lprobs = _next_log_probs(model, search, beam, min_len, vocab_limit)  # [N, V]
        candidates = _top_candidates(search, lprobs, beam)
        _finalize_eos(search, candidates, lprobs, beam, lenpen)
        done = [len(search.finished[s]) >= beam or cap <= search.step
                for s, cap in zip(search.sent_ids, search.sent_max_len)]
        if all(done):
            break
        _advance(search, candidates, lprobs, done, beam)
    results = []
    for hyps in search.finished:
        hyps.sort(key=lambda h: h.score, reverse=True)
        results.append(hyps[:nbest])
    return results


def _check_search_args(beam: int, nbest: int, min_len: int) -> None:
    if beam < 1:
        raise UserError(f"beam size must be at least 1, got {beam}")
    if not 1 <= nbest <= beam:
        raise UserError(f"nbest must be between 1 and the beam size {beam}, got {nbest}")
    if min_len < 0:
        raise UserError(f"min_len must be >= 0, got {min_len}")


def _start(model: TranslationModel, src_tokens: torch.Tensor, k: int, max_len_a: float, max_len_b: int,
           min_len: int, incremental: bool) -> _Search:
    """Encode the batch, give each sentence K rows, and start every hypothesis from BOS."""
    cfg = model.cfg
    bsz, device = src_tokens.size(0), src_tokens.device
    # Decoder inputs of length max_len + 1 (BOS + tokens) must fit the position table.
    max_len = max_lengths(src_tokens, cfg.pad_id, max_len_a, max_len_b, cfg.max_positions - 1, min_len)  # [B]
    encoder_out = model.encode(src_tokens)
    expand = torch.arange(bsz, device=device).repeat_interleave(k)  # [N]
    encoder_out = EncoderOut(encoder_out.memory.index_select(0, expand),
                             encoder_out.padding_mask.index_select(0, expand), encoder_out.has_padding)
    # Only the first hypothesis of a sentence is live at step 0, so the K beams start from distinct tokens.
    scores = torch.full((bsz, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    return _Search(sent_ids=list(range(bsz)), sent_max_len=max_len.tolist(),
                   tokens=torch.full((bsz * k, 1), cfg.bos_id, dtype=torch.long, device=device),
                   step_lprobs=torch.zeros(bsz * k, 0, device=device), scores=scores.view(-1),
                   encoder_out=encoder_out, cache=model.new_cache(encoder_out) if incremental else None,
                   finished=[[] for _ in range(bsz)], eos_id=cfg.eos_id)


def _next_log_probs(model: TranslationModel, search: _Search, k: int, min_len: int,
                    vocab_limit: Optional[int]) -> torch.Tensor:
    """log_softmax of the newest position of every hypothesis [N, V], with forbidden tokens at -inf
    (pad, BOS, ids past ``vocab_limit``, EOS before ``min_len``; everything but EOS at a sentence's cap)."""
    cfg = model.cfg
    if search.cache is not None:
        features = model.decode_features(search.tokens[:, -1:], search.encoder_out, search.cache)  # [N, 1, D]
    else:
        features = model.decode_features(search.tokens, search.encoder_out)  # [N, t + 1, D]
    logits = model.output_proj(features[:, -1])  # [N, V]: only the newest position is scored
    lprobs = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    lprobs[:, cfg.pad_id] = float("-inf")
    lprobs[:, cfg.bos_id] = float("-inf")
    if vocab_limit is not None:
        lprobs[:, vocab_limit:] = float("-inf")
    if search.step < min_len:
        lprobs[:, cfg.eos_id] = float("-inf")
    at_limit = [i for i, cap in enumerate(search.sent_max_len) if cap <= search.step]
    if at_limit:  # force EOS: keep its log-prob, forbid everything else
        device = lprobs.device
        rows = (torch.tensor(at_limit, device=device)[:, None] * k + torch.arange(k, device=device)).view(-1)
        eos_lprob = lprobs[rows, cfg.eos_id]
        lprobs[rows] = float("-inf")
        lprobs[rows, cfg.eos_id] = eos_lprob
    return lprobs


def _top_candidates(search: _Search, lprobs: torch.Tensor, k: int) -> _Candidates:
    live, vocab = search.live, lprobs.size(1)
    cand = (search.scores[:, None] + lprobs).view(live, k * vocab)  # [B', K * V]
    cand_scores, cand_index = cand.topk(2 * k, dim=1)  # [B', 2K]
    cand_beam = torch.div(cand_index, vocab, rounding_mode="floor")  # [B', 2K] beam within sentence
    cand_token = cand_index % vocab  # [B', 2K]
    cand_row = cand_beam + torch.arange(live, device=lprobs.device)[:, None] * k  # [B', 2K] row in [N]
    return _Candidates(cand_scores, cand_row, cand_token, cand_token.eq(search.eos_id))


def _finalize_eos(search: _Search, cand: _Candidates, lprobs: torch.Tensor, k: int, lenpen: float) -> None:
    """Finish the EOS candidates among each sentence's top K, best first, while it has room."""
    hits = (cand.is_eos[:, :k] & torch.isfinite(cand.scores[:, :k])).nonzero()  # [H, 2] (sentence, column)
    if not hits.numel():
        return
    hit_rows = cand.rows[hits[:, 0], hits[:, 1]]  # [H]
    hit_scores = cand.scores[hits[:, 0], hits[:, 1]].tolist()
    hit_tokens = search.tokens.index_select(0, hit_rows)[:, 1:].tolist()
    hit_positional = torch.cat([search.step_lprobs.index_select(0, hit_rows),
                                lprobs[hit_rows, search.eos_id][:, None]], dim=1).cpu()  # [H, t + 1]
    norm = (search.step + 1) ** lenpen
    for h, sent in enumerate(hits[:, 0].tolist()):
        hyps = search.finished[search.sent_ids[sent]]
        if len(hyps) < k:
            hyps.append(Hypothesis(hit_tokens[h], hit_scores[h] / norm, hit_positional[h]))


def _advance(search: _Search, cand: _Candidates, lprobs: torch.Tensor, done: list[bool], k: int) -> None:
    """The first K non-EOS candidates of every unfinished sentence continue; finished sentences leave."""
    device = lprobs.device
    live = search.live
    order = cand.is_eos.long() * (2 * k) + torch.arange(2 * k, device=device)  # [B', 2K]
    pick = order.topk(k, dim=1, largest=False).indices  # [B', K]: positions are already sorted by score
    kept = [i for i, d in enumerate(done) if not d]
    rows, tokens, scores = cand.rows, cand.tokens, cand.scores
    shrank = len(kept) < live
    if shrank:
        keep = torch.tensor(kept, device=device)  # [B'']
        pick, rows = pick.index_select(0, keep), rows.index_select(0, keep)
        tokens, scores = tokens.index_select(0, keep), scores.index_select(0, keep)
    new_rows = rows.gather(1, pick).view(-1)  # [N'']
    new_tokens = tokens.gather(1, pick).view(-1, 1)  # [N'', 1]
    search.scores = scores.gather(1, pick).view(-1)  # [N'']
    token_lprobs = lprobs[new_rows, new_tokens.squeeze(1)]  # [N'']
    search.step_lprobs = torch.cat([search.step_lprobs.index_select(0, new_rows), token_lprobs[:, None]], dim=1)
    search.tokens = torch.cat([search.tokens.index_select(0, new_rows), new_tokens], dim=1)
    # The K rows of a sentence share one encoder output (and cross-attention keys/values), so those
    # only need re-selecting when sentences leave the batch, not when beams are reordered.
    if shrank:
        kept_rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)  # [N'']
        out = search.encoder_out
        search.encoder_out = EncoderOut(out.memory.index_select(0, kept_rows),
                                        out.padding_mask.index_select(0, kept_rows), out.has_padding)
        search.sent_ids = [search.sent_ids[i] for i in kept]
        search.sent_max_len = [search.sent_max_len[i] for i in kept]
    if search.cache is not None:
        reorder_cache(search.cache, new_rows, batch_shrank=shrank)
    search.step += 1


def reorder_cache(cache: DecoderCache, new_rows: torch.Tensor, batch_shrank: bool) -> None:
    """``cache.reorder(new_rows)``, minus work that beam search knows to be a no-op.

    Self-attention keys/values follow their hypotheses (``new_rows`` [N'']). Cross-attention ones and the
    memory padding mask are identical for the K rows of a sentence, and ``new_rows`` never moves a row to
    another sentence, so they only change when sentences leave the batch (``batch_shrank``).
    fairseq skips the same copies. This halves the index_selects per step.
    """
    if not batch_shrank:
        for entry in cache.self_attn:
            entry.reorder(new_rows)
        return
    cache.reorder(new_rows)


def make_batch(sequences: list[list[int]], pad_id: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Right-pad lists of ids into a [B, S] LongTensor."""
    width = max((len(s) for s in sequences), default=0)
    batch = torch.full((len(sequences), max(width, 1)), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        batch[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return batch.to(device) if device is not None else batch
