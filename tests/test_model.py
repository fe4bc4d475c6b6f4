"""The pure-PyTorch model: shapes, masks, residual schemes, incremental decoding, checkpointing, presets,
bad input, export round trip, and independence from DeepSpeed."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import admin_ds
from admin_ds.checkpoints.exports import write_export
from admin_ds.errors import UserError
from admin_ds.model import PRESETS, ModelConfig, build_model, preset_config
from admin_ds.model.residual import Residual

SCHEMES = ("admin", "post-ln", "pre-ln", "deepnorm")
V = 64  # admin-tiny's vocabulary
PAD = 0


def tiny(residual: str = "admin", seed: int = 0, **overrides):
    """admin-tiny (2+2 layers, d=32, 4 heads, ffn 64, vocab 64), in eval mode, seeded."""
    torch.manual_seed(seed)
    return build_model("admin-tiny", residual=residual, **overrides).eval()


def tokens(batch: int, time: int, seed: int = 1, vocab: int = V) -> torch.Tensor:
    """Random non-special ids [batch, time] (ids 0..3 are pad/unk/bos/eos)."""
    return torch.randint(4, vocab, (batch, time), generator=torch.Generator().manual_seed(seed))


def set_omegas(model, value_fn) -> None:
    with torch.no_grad():
        for stack in ("encoder", "decoder"):
            for i, residual in enumerate(model.residuals(stack)):
                residual.omega.copy_(value_fn(stack, i, residual.omega.numel()))


def omega_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.endswith(".omega")}


# --- shapes ----------------------------------------------------------------------------------------

def test_output_shapes():
    model = tiny()
    src, tgt = tokens(3, 7), tokens(3, 5, seed=2)
    src[1, 5:] = PAD
    assert model(src, tgt).shape == (3, 5, V)
    enc = model.encode(src)
    assert enc.memory.shape == (3, 7, 32)
    assert enc.padding_mask.dtype == torch.bool and enc.padding_mask.shape == (3, 7)
    assert enc.padding_mask[1].tolist() == [False] * 5 + [True] * 2
    assert enc.has_padding and enc.attention_mask is enc.padding_mask
    unpadded = model.encode(tokens(3, 7))  # no padding: the attention mask is dropped, decided once
    assert not unpadded.has_padding and unpadded.attention_mask is None
    assert model.new_cache(unpadded).memory_padding_mask is None
    assert model.decode_features(tgt, enc).shape == (3, 5, 32)
    assert model.decode(tgt, enc).shape == (3, 5, V)
    # Separate vocabularies (no sharing) give logits over the target vocabulary.
    model = tiny(share_all_embeddings=False, share_decoder_input_output_embed=False,
                 src_vocab_size=50, tgt_vocab_size=70)
    assert model(tokens(2, 6, vocab=50), tokens(2, 4, vocab=70)).shape == (2, 4, 70)
    # A single-token batch works too.
    assert model(tokens(1, 1, vocab=50), tokens(1, 1, vocab=70)).shape == (1, 1, 70)


def test_embeddings_shared_as_configured():
    model = tiny()
    assert model.src_embed.table is model.tgt_embed.table
    assert model.output_proj.weight is model.src_embed.table.weight
    model = tiny(share_all_embeddings=False)
    assert model.src_embed.table is not model.tgt_embed.table
    assert model.output_proj.weight is model.tgt_embed.table.weight
    model = tiny(share_all_embeddings=False, share_decoder_input_output_embed=False)
    assert model.output_proj.weight is not model.tgt_embed.table.weight


# --- masks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("residual", SCHEMES)
def test_source_padding_invariance(residual):
    """Right-padding a source (alone or inside a batch of longer rows) leaves every target logit unchanged."""
    model = tiny(residual)
    lengths = [7, 4, 2]
    rows = [tokens(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    tgt = tokens(3, 5, seed=3)
    src = torch.full((3, 9), PAD)  # two extra pad columns beyond the longest row
    for i, row in enumerate(rows):
        src[i, : row.size(1)] = row
    with torch.no_grad():
        batched = model(src, tgt)
        enc = model.encode(src)
        for i, row in enumerate(rows):
            alone = model(row, tgt[i: i + 1])
            torch.testing.assert_close(batched[i: i + 1], alone, atol=1e-5, rtol=0)
            alone_memory = model.encode(row).memory
            torch.testing.assert_close(enc.memory[i: i + 1, : lengths[i]], alone_memory, atol=1e-5, rtol=0)
    # The mask really matters: the same ids with the pads made visible (an unk id) change the logits.
    unmasked = src.clone()
    unmasked[unmasked == PAD] = 1
    with torch.no_grad():
        assert (model(unmasked, tgt)[1] - batched[1]).abs().max() > 1e-3


@pytest.mark.parametrize("residual", SCHEMES)
def test_target_padding_invariance(residual):
    model = tiny(residual)
    src, tgt = tokens(3, 6), tokens(3, 5, seed=2)
    padded = torch.cat([tgt, torch.full((3, 3), PAD)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(src, padded)[:, :5], model(src, tgt), atol=1e-5, rtol=0)
        # A batch whose rows have different target lengths: each row matches its own unpadded run.
        ragged = tgt.clone()
        ragged[1, 3:] = PAD
        batched = model(src, ragged)
        torch.testing.assert_close(batched[1:2, :3], model(src[1:2], tgt[1:2, :3]), atol=1e-5, rtol=0)


def test_causal_mask():
    model = tiny()
    src, tgt = tokens(2, 6), tokens(2, 6, seed=2)
    changed = tgt.clone()
    changed[:, 3] = (changed[:, 3] + 7 - 4) % (V - 4) + 4
    with torch.no_grad():
        before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(before[:, :3], after[:, :3], atol=1e-6, rtol=0)
    assert (before[:, 3:] - after[:, 3:]).abs().amax(dim=-1).min() > 1e-4  # every later position sees it


def test_source_changes_reach_the_decoder():
    model = tiny()
    src, tgt = tokens(2, 6), tokens(2, 4, seed=2)
    changed = src.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 4) % (V - 4) + 4
    with torch.no_grad():
        assert (model(src, tgt) - model(changed, tgt)).abs().amax(dim=-1).min() > 1e-4


# --- residual schemes ------------------------------------------------------------------------------

def test_admin_with_unit_omega_equals_post_ln():
    post = tiny("post-ln", seed=0)
    admin = tiny("admin", seed=123)  # different init: everything must come from the state dict
    missing, unexpected = admin.load_state_dict(post.state_dict(), strict=False)
    assert unexpected == []
    assert set(missing) == omega_names(admin)
    assert len(missing) == 2 * 2 + 3 * 2  # 2 sublayers per encoder layer, 3 per decoder layer
    # Same parameter names apart from ω.
    assert {n for n, _ in admin.named_parameters()} - omega_names(admin) == {n for n, _ in post.named_parameters()}
    assert all(torch.equal(r.omega, torch.ones(32)) for s in ("encoder", "decoder") for r in admin.residuals(s))
    src, tgt = tokens(3, 7), tokens(3, 5, seed=2)
    src[2, 4:] = PAD
    with torch.no_grad():
        torch.testing.assert_close(admin(src, tgt), post(src, tgt), atol=1e-6, rtol=0)
    # Also in training mode with dropout, given the same random stream.
    admin.train(), post.train()
    torch.manual_seed(5)
    train_admin = admin(src, tgt)
    torch.manual_seed(5)
    torch.testing.assert_close(train_admin, post(src, tgt), atol=1e-6, rtol=0)


def test_admin_with_other_omega_differs_and_omega_trains():
    post = tiny("post-ln")
    admin = tiny("admin", seed=9)
    admin.load_state_dict(post.state_dict(), strict=False)
    set_omegas(admin, lambda stack, i, d: torch.full((d,), 1.0 + 0.5 * i))
    src, tgt = tokens(2, 6), tokens(2, 4, seed=2)
    with torch.no_grad():
        assert (admin(src, tgt) - post(src, tgt)).abs().max() > 1e-3
    # ω is a trainable per-dimension vector: it gets a gradient of its own.
    admin.train()
    admin(src, tgt).sum().backward()
    for stack in ("encoder", "decoder"):
        for residual in admin.residuals(stack):
            assert residual.omega.requires_grad and residual.omega.shape == (32,)
            assert residual.omega.grad is not None and residual.omega.grad.abs().sum() > 0


def test_omega_parameter_names_and_order():
    model = tiny(encoder_layers=3, decoder_layers=2)
    expected = [f"encoder.layers.{i}.{s}_residual.omega" for i in range(3) for s in ("self_attn", "ffn")]
    expected += [f"decoder.layers.{j}.{s}_residual.omega" for j in range(2)
                 for s in ("self_attn", "cross_attn", "ffn")]
    params = dict(model.named_parameters())
    assert omega_names(model) == set(expected)
    # residuals() walks the sublayers in Admin's profiling order, i.e. the order of the names above.
    walked = [r.omega for s in ("encoder", "decoder") for r in model.residuals(s)]
    assert all(a is params[name] for a, name in zip(walked, expected)) and len(walked) == len(expected)
    for residual in ("post-ln", "pre-ln", "deepnorm"):
        assert omega_names(tiny(residual)) == set()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_residual_formula(scheme):
    """Residual computes docs/admin.md's formula for each scheme (eval mode: dropout off)."""
    torch.manual_seed(0)
    d = 16
    residual = Residual(d, scheme, alpha=1.7 if scheme == "deepnorm" else 1.0, dropout=0.3, eps=1e-5).eval()
    with torch.no_grad():
        residual.norm.weight.uniform_(0.5, 1.5)
        residual.norm.bias.uniform_(-0.5, 0.5)
        if residual.omega is not None:
            residual.omega.uniform_(0.5, 3.0)
    x = torch.randn(2, 3, d)
    weight = torch.randn(d, d)
    branch = lambda h: h @ weight  # noqa: E731
    norm = lambda h: F.layer_norm(h, (d,), residual.norm.weight, residual.norm.bias, 1e-5)  # noqa: E731
    expected = {
        "admin": lambda: norm(residual.omega * x + branch(x)),
        "post-ln": lambda: norm(x + branch(x)),
        "deepnorm": lambda: norm(1.7 * x + branch(x)),
        "pre-ln": lambda: x + branch(norm(x)),
    }[scheme]()
    with torch.no_grad():
        torch.testing.assert_close(residual(x, branch), expected, atol=1e-5, rtol=1e-5)


def test_pre_ln_has_final_norms():
    model = tiny("pre-ln")
    names = {n for n, _ in model.named_parameters()}
    assert {"encoder.norm.weight", "encoder.norm.bias", "decoder.norm.weight", "decoder.norm.bias"} <= names
    for residual in ("admin", "post-ln", "deepnorm"):
        other = tiny(residual)
        assert other.encoder.norm is None and other.decoder.norm is None
        assert not any(n.startswith(("encoder.norm", "decoder.norm")) for n, _ in other.named_parameters())
    # The final norm is applied to the encoder and decoder outputs.
    with torch.no_grad():
        model.encoder.norm.weight.fill_(2.0)
        model.encoder.norm.bias.fill_(0.5)
        model.decoder.norm.weight.fill_(3.0)
        model.decoder.norm.bias.fill_(-1.0)
        src, tgt = tokens(2, 6), tokens(2, 4, seed=2)
        enc = model.encode(src)
        features = model.decode_features(tgt, enc)
    torch.testing.assert_close(enc.memory.mean(-1), torch.full((2, 6), 0.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(enc.memory.std(-1, unbiased=False), torch.full((2, 6), 2.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(features.mean(-1), torch.full((2, 4), -1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(-1, unbiased=False), torch.full((2, 4), 3.0), atol=1e-3, rtol=0)


def test_deepnorm_alpha_and_beta():
    n, m, d, f = 6, 4, 256, 512
    torch.manual_seed(0)
    model = build_model("admin-tiny", residual="deepnorm", encoder_layers=n, decoder_layers=m, d_model=d,
                        nhead=4, ffn_dim=f)
    alpha_enc, beta_enc = 0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)
    alpha_dec, beta_dec = (3 * m) ** 0.25, (12 * m) ** -0.25
    for layer in model.encoder.layers:
        assert all(r.alpha == pytest.approx(alpha_enc, rel=1e-12) for r in layer.residuals())
    for layer in model.decoder.layers:
        assert all(r.alpha == pytest.approx(alpha_dec, rel=1e-12) for r in layer.residuals())
    # β is the Xavier gain of the value, output and FFN weights (queries and keys are not rescaled).
    xavier_std = lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))  # noqa: E731

    def check(weight, gain, fan_in, fan_out):
        bound = gain * math.sqrt(3.0) * xavier_std(fan_in, fan_out)
        assert weight.abs().max() <= bound + 1e-6
        assert weight.std().item() == pytest.approx(gain * xavier_std(fan_in, fan_out), rel=0.03)

    for layer, beta in ((model.encoder.layers[0], beta_enc), (model.decoder.layers[-1], beta_dec)):
        check(layer.self_attn.qkv_proj.weight[2 * d:], beta, d, d)
        check(layer.self_attn.out_proj.weight, beta, d, d)
        check(layer.ffn.fc1.weight, beta, d, f)
        check(layer.ffn.fc2.weight, beta, f, d)
    cross = model.decoder.layers[0].cross_attn
    check(cross.kv_proj.weight[d:], beta_dec, d, d)
    check(cross.kv_proj.weight[:d], 1.0, d, d)
    # Other schemes use α = 1 and gain 1.
    post = build_model("admin-tiny", residual="post-ln", d_model=d, ffn_dim=f)
    assert all(r.alpha == 1.0 for r in post.residuals("encoder") + post.residuals("decoder"))
    check(post.encoder.layers[0].ffn.fc1.weight, 1.0, d, f)


# --- incremental decoding --------------------------------------------------------------------------

def step_by_step(model, src, tgt, enc=None, cache=None, start=0):
    enc = enc if enc is not None else model.encode(src)
    cache = cache if cache is not None else model.new_cache(enc)
    outputs = []
    for t in range(start, tgt.size(1)):
        outputs.append(model.decode(tgt[:, t: t + 1], enc, cache))
    return torch.cat(outputs, dim=1), enc, cache


@pytest.mark.parametrize("residual", SCHEMES)
def test_incremental_decoding_equals_full(residual):
    model = tiny(residual)
    src, tgt = tokens(3, 7), tokens(3, 6, seed=2)
    src[1, 4:] = PAD  # padding in the source
    src[2, 2:] = PAD
    with torch.no_grad():
        full = model.decode(tgt, model.encode(src))
        steps, _, cache = step_by_step(model, src, tgt)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    assert cache.steps == 6
    assert cache.self_attn[0].key.shape == (3, 4, 6, 8)  # [B, H, T, Dh]
    assert cache.cross_attn[0].key.shape == (3, 4, 7, 8)  # [B, H, S, Dh]


def test_incremental_decoding_in_chunks():
    """A cache also accepts several new positions at once (e.g. a forced prefix)."""
    model = tiny()
    src, tgt = tokens(2, 5), tokens(2, 6, seed=2)
    src[0, 3:] = PAD
    with torch.no_grad():
        enc = model.encode(src)
        full = model.decode(tgt, enc)
        cache = model.new_cache(enc)
        first = model.decode(tgt[:, :4], enc, cache)
        rest, _, _ = step_by_step(model, src, tgt, enc, cache, start=4)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=0)


def test_cache_reorder_matches_reordered_recomputation():
    model = tiny()
    src, tgt = tokens(3, 7), tokens(3, 6, seed=2)
    src[0, 5:] = PAD
    src[2, 3:] = PAD
    new_order = torch.tensor([2, 0, 0, 1])  # beam-style: rows dropped, duplicated and permuted
    with torch.no_grad():
        _, enc, cache = step_by_step(model, src, tgt[:, :3])
        assert cache.reorder(new_order) is cache
        assert torch.equal(cache.memory_padding_mask, enc.padding_mask[new_order])
        rest, _, _ = step_by_step(model, src, tgt[new_order], enc, cache, start=3)
        full = model(src[new_order], tgt[new_order])
    torch.testing.assert_close(rest, full[:, 3:], atol=1e-5, rtol=0)


# --- activation checkpointing ----------------------------------------------------------------------

@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_gives_same_loss_and_gradients(every, dropout):
    shape = dict(encoder_layers=3, decoder_layers=3, dropout=dropout, attention_dropout=dropout,
                 activation_dropout=dropout)
    plain = tiny(**shape).train()
    ckpt = tiny(checkpoint_every=every, **shape).train()
    ckpt.load_state_dict(plain.state_dict())
    with torch.no_grad():  # non-trivial ω so the admin shortcut is exercised
        set_omegas(plain, lambda stack, i, d: torch.linspace(0.5, 2.0, d) + 0.1 * i)
        set_omegas(ckpt, lambda stack, i, d: torch.linspace(0.5, 2.0, d) + 0.1 * i)
    src, tgt = tokens(3, 7), tokens(3, 6, seed=2)
    src[1, 4:] = PAD
    calls = []
    layer_forward = ckpt.encoder.layers[0].forward

    def counted_forward(*args, **kwargs):  # forward hooks do not fire in the recomputation; this does
        calls.append(1)
        return layer_forward(*args, **kwargs)

    ckpt.encoder.layers[0].forward = counted_forward

    def loss_and_grads(model):
        torch.manual_seed(1234)
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1), ignore_index=PAD)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_plain, grads_plain = loss_and_grads(plain)
    loss_ckpt, grads_ckpt = loss_and_grads(ckpt)
    assert len(calls) == 2  # the layer ran again in backward: checkpointing is really on
    torch.testing.assert_close(loss_ckpt, loss_plain, atol=1e-6, rtol=0)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], atol=1e-6, rtol=1e-6, msg=name)
    # Under no_grad (generation) checkpointing is skipped and the output is unchanged.
    with torch.no_grad():
        plain.eval(), ckpt.eval()
        torch.testing.assert_close(ckpt(src, tgt), plain(src, tgt), atol=1e-6, rtol=0)


# --- presets and parameter counts ------------------------------------------------------------------

def expected_parameters(cfg: ModelConfig) -> int:
    """Parameter count by formula, independent of the model code."""
    d, f = cfg.d_model, cfg.ffn_dim
    self_attn = 3 * d * d + 3 * d + d * d + d  # packed q/k/v projection + output projection
    cross_attn = d * d + d + 2 * d * d + 2 * d + d * d + d  # q, packed k/v, output
    ffn = d * f + f + f * d + d
    layer_norm = 2 * d
    omega = d if cfg.residual == "admin" else 0
    encoder_layer = self_attn + ffn + 2 * (layer_norm + omega)
    decoder_layer = self_attn + cross_attn + ffn + 3 * (layer_norm + omega)
    final_norms = 2 * layer_norm if cfg.residual == "pre-ln" else 0
    if cfg.share_all_embeddings:
        tables = cfg.src_vocab_size * d  # one table: source, target, output projection
    elif cfg.share_decoder_input_output_embed:
        tables = (cfg.src_vocab_size + cfg.tgt_vocab_size) * d
    else:
        tables = (cfg.src_vocab_size + 2 * cfg.tgt_vocab_size) * d
    return tables + cfg.encoder_layers * encoder_layer + cfg.decoder_layers * decoder_layer + final_norms


def count_on_meta(arch: str, **overrides) -> tuple[int, ModelConfig]:
    with torch.device("meta"):  # no memory, no init cost: even admin-100-100 and the big model are instant
        model = build_model(arch, **overrides)
    return sum(p.numel() for p in model.parameters()), model.cfg


def test_admin_60_12_parameter_count():
    count, cfg = count_on_meta("admin-60-12", src_vocab_size=32000, tgt_vocab_size=32000)
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.ffn_dim, cfg.nhead) == (60, 12, 512, 2048, 8)
    assert cfg.share_all_embeddings
    by_hand = 32000 * 512 + 60 * 3_153_408 + 12 * 4_205_568  # per-layer counts worked out on paper
    assert count == expected_parameters(cfg) == by_hand == 256_055_296
    omegas = (2 * 60 + 3 * 12) * 512
    print(f"\nadmin-60-12 (d=512, ffn 2048, 8 heads, shared 32k vocab): {count:,} parameters "
          f"({omegas:,} of them ω; post-ln of the same shape: {count - omegas:,})")


@pytest.mark.parametrize("arch", sorted(PRESETS))
@pytest.mark.parametrize("residual", SCHEMES)
def test_preset_parameter_counts(arch, residual):
    count, cfg = count_on_meta(arch, residual=residual)
    assert count == expected_parameters(cfg)


@pytest.mark.parametrize("sharing", [dict(share_all_embeddings=False),
                                     dict(share_all_embeddings=False, share_decoder_input_output_embed=False)])
def test_parameter_counts_without_sharing(sharing):
    count, cfg = count_on_meta("admin-6-6", src_vocab_size=30000, tgt_vocab_size=20000, **sharing)
    assert count == expected_parameters(cfg)


def test_paper_presets_have_the_paper_shapes():
    shapes = {"admin-6-6": (6, 6, 512, 2048, 8), "admin-18-18": (18, 18, 512, 2048, 8),
              "admin-60-12": (60, 12, 512, 2048, 8), "admin-60-12-big": (60, 12, 1024, 4096, 16),
              "admin-100-100": (100, 100, 512, 2048, 8)}
    for arch, shape in shapes.items():
        cfg = preset_config(arch)
        assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model, cfg.ffn_dim, cfg.nhead) == shape, arch
        assert cfg.residual == "admin"
    big, _ = count_on_meta("admin-60-12-big")
    print(f"\nadmin-60-12-big: {big:,} parameters")


def test_every_override_is_applied():
    overrides = dict(encoder_layers=3, decoder_layers=1, d_model=48, nhead=6, ffn_dim=40, residual="post-ln",
                     dropout=0.2, attention_dropout=0.15, activation_dropout=0.05, src_vocab_size=70,
                     tgt_vocab_size=90, share_all_embeddings=False, share_decoder_input_output_embed=False,
                     max_positions=30, layer_norm_eps=1e-6, pad_id=1, bos_id=0, eos_id=5, checkpoint_every=2)
    assert set(overrides) == {f for f in ModelConfig.__dataclass_fields__}  # the test covers every field
    model = build_model("admin-tiny", **overrides)
    assert model.cfg.to_dict() == overrides
    enc_layer, dec_layer = model.encoder.layers[0], model.decoder.layers[0]
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 1
    assert enc_layer.self_attn.qkv_proj.weight.shape == (144, 48)
    assert enc_layer.self_attn.nhead == 6 and enc_layer.self_attn.head_dim == 8
    assert enc_layer.ffn.fc1.weight.shape == (40, 48)
    assert enc_layer.self_attn_residual.omega is None
    assert enc_layer.self_attn_residual.dropout.p == 0.2 and model.src_embed.dropout.p == 0.2
    assert dec_layer.cross_attn.dropout == 0.15 and enc_layer.ffn.activation_dropout.p == 0.05
    assert model.src_embed.table.weight.shape == (70, 48) and model.output_proj.weight.shape == (90, 48)
    assert model.output_proj.weight is not model.tgt_embed.table.weight
    assert model.src_embed.positions.shape == (30, 48)
    assert dec_layer.ffn_residual.norm.eps == 1e-6
    assert model.src_embed.table.padding_idx == 1
    assert model.encoder.checkpoint_every == 2 and model.decoder.checkpoint_every == 2
    src = torch.tensor([[4, 5, 6, 1, 1]])
    assert model.encode(src).padding_mask.tolist() == [[False, False, False, True, True]]
    # None means "keep the preset's value" (unset command-line flags).
    assert build_model("admin-tiny", d_model=None).cfg.d_model == PRESETS["admin-tiny"]["d_model"]


# --- bad input -------------------------------------------------------------------------------------

def raises_user_error(fn, *words):
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and message.strip()
    for word in words:
        assert word in message, (word, message)
    return message


def test_bad_configs_raise_user_errors():
    raises_user_error(lambda: build_model("admin-7-7"), "unknown preset", "admin-7-7", "admin-60-12")
    raises_user_error(lambda: admin_ds.build_model("nope"), "unknown preset")
    raises_user_error(lambda: build_model("admin-tiny", d_model=30, nhead=4), "d_model", "30", "nhead", "4")
    raises_user_error(lambda: build_model("admin-tiny", residual="rezero"), "residual", "rezero")
    raises_user_error(lambda: build_model("admin-tiny", encoder_layers=0), "encoder_layers")
    raises_user_error(lambda: build_model("admin-tiny", nhead=2.5), "nhead")
    raises_user_error(lambda: build_model("admin-tiny", dropout=1.0), "dropout")
    raises_user_error(lambda: build_model("admin-tiny", ffn_dims=10), "unknown", "ffn_dims")
    raises_user_error(lambda: build_model("admin-tiny", src_vocab_size=50), "share_all_embeddings", "50")
    raises_user_error(lambda: build_model("admin-tiny", pad_id=64), "pad_id")
    raises_user_error(lambda: build_model("admin-tiny", checkpoint_every=-1), "checkpoint_every")


def test_bad_tokens_raise_user_errors():
    model = tiny()
    src, tgt = tokens(2, 5), tokens(2, 4, seed=2)
    raises_user_error(lambda: model(src.int(), tgt), "src_tokens", "LongTensor", "int32")
    raises_user_error(lambda: model(src, tgt.float()), "tgt_tokens", "LongTensor", "float32")
    raises_user_error(lambda: model(src, tgt[:1]), "batch", "2", "1")
    raises_user_error(lambda: model(src[0], src[0]), "src_tokens", "[batch, time]")
    long_src = tokens(1, 1025)
    raises_user_error(lambda: model(long_src, tgt[:1]), "max_positions")
    with torch.no_grad():  # the incremental path checks too
        enc = model.encode(src)
        cache = model.new_cache(enc)
        raises_user_error(lambda: model.decode(torch.full((2, 1), 5.0), enc, cache), "tgt_tokens", "LongTensor")
    # Id values are checked where data enters (collate, translate), not here: the forward reads no values.
    too_big = src.clone()
    too_big[0, 1] = V
    with pytest.raises(IndexError):
        model(too_big, tgt)


class DeviceReads(TorchDispatchMode):
    """Counts the ops that copy a value from a tensor to the host (.item(), int(t), bool(t), nonzero):
    on a GPU each one makes the host wait for every kernel queued before it."""

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


def test_a_training_forward_reads_one_value_from_the_device():
    model = tiny()
    src, tgt = tokens(3, 6), tokens(3, 5, seed=2)
    src[0, 4:] = model.cfg.pad_id  # padded, so that the padding decision is a real one
    with DeviceReads() as reads:
        loss, nll = model(src, tgt, target=tgt, label_smoothing=0.1)
    assert torch.isfinite(loss) and torch.isfinite(nll)
    # One read: encode decides once whether the batch has padding (EncoderOut.has_padding).
    assert reads.count == 1


# --- loading and independence from DeepSpeed -------------------------------------------------------

def test_load_model_round_trip(tmp_path):
    model = tiny(share_all_embeddings=False)
    set_omegas(model, lambda stack, i, d: torch.rand(d, generator=torch.Generator().manual_seed(i)) + 0.5)
    out = write_export(model, tmp_path / "export")
    loaded = admin_ds.load_model(out)
    assert not loaded.training
    assert loaded.cfg == model.cfg
    src, tgt = tokens(2, 6), tokens(2, 5, seed=2)
    src[0, 4:] = PAD
    with torch.no_grad():
        assert torch.equal(loaded(src, tgt), model(src, tgt))
    for a, b in zip(loaded.residuals("decoder"), model.residuals("decoder")):
        assert torch.equal(a.omega, b.omega)
    # An existing directory is refused without force, and replaced with it.
    raises_user_error(lambda: write_export(model, out), "exists", "--force")
    other = tiny(share_all_embeddings=False, seed=7)
    write_export(other, out, force=True)
    with torch.no_grad():
        assert torch.equal(admin_ds.load_model(out)(src, tgt), other(src, tgt))
    raises_user_error(lambda: admin_ds.load_model(tmp_path / "missing"), "not found")


def test_model_code_needs_no_deepspeed(tmp_path):
    script = textwrap.dedent(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "deepspeed" or name.startswith("deepspeed."):
                    raise ImportError("deepspeed import blocked by the test: " + name)
                return None

        sys.meta_path.insert(0, Block())
        sys.modules["deepspeed"] = None
        import torch
        import admin_ds
        from admin_ds.model import build_model
        from admin_ds.checkpoints.exports import write_export
        model = build_model("admin-tiny").eval()
        src = torch.randint(4, 64, (2, 5))
        tgt = torch.randint(4, 64, (2, 3))
        logits = model(src, tgt)
        assert logits.shape == (2, 3, 64), logits.shape
        write_export(model, {str(tmp_path / "export")!r})
        assert torch.equal(admin_ds.load_model({str(tmp_path / "export")!r})(src, tgt), model(src, tgt))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "deepspeed" and sys.modules[m] is not None)
        assert not loaded, loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
