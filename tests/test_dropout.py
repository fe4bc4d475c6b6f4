"""The CPU dropout (model/dropout.py): drop rate, scale, gradient, reproducibility, eval/p=0 identity."""

import pytest
import torch

from admin_ds.model.dropout import Dropout, keep_mask, keep_mask_as


def test_drop_rate_and_unbiased_scale():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = Dropout(0.1).train()(x)
    dropped = (y == 0).float().mean().item()
    # 400k Bernoulli(0.1) draws: the standard deviation of the rate is 4.7e-4.
    assert abs(dropped - 0.1) < 3e-3
    kept = y[y != 0]
    assert torch.all(kept == kept[0]) and kept[0].item() == pytest.approx(1 / 0.9, rel=1e-4)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_mask_rate_follows_p(p):
    torch.manual_seed(1)
    mask, scale = keep_mask(torch.Size([300_000]), p, torch.device("cpu"))
    assert mask.dtype == torch.bool
    assert mask.float().mean().item() == pytest.approx(1 - p, abs=4e-3)
    assert scale == pytest.approx(1 / (1 - p), rel=1e-4)


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(8, 5, 16, requires_grad=True)
    weights = torch.randn(8, 5, 16)
    y = Dropout(0.25).train()(x)
    (y * weights).sum().backward()
    kept = y != 0
    scale = (y[kept] / x.detach()[kept]).mean()
    assert scale.item() == pytest.approx(1 / 0.75, rel=1e-4)
    torch.testing.assert_close(x.grad, weights * kept * scale, rtol=1e-5, atol=1e-6)


def test_same_seed_same_mask_and_shapes_kept():
    x = torch.randn(3, 7, 11)
    torch.manual_seed(5)
    a = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    b = Dropout(0.3).train()(x)
    c = Dropout(0.3).train()(x)  # the stream moved on
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_identity_in_eval_and_at_zero():
    x = torch.randn(4, 9)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_keeps_half_precision_dtypes():
    torch.manual_seed(3)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.ones(1000, dtype=dtype)
        y = Dropout(0.2).train()(x)
        assert y.dtype == dtype and 0 < (y == 0).sum() < 1000


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_rejects_bad_probability(p):
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


def test_elements_sharing_a_random_word_are_independent():
    """Four elements take their 16-bit uniforms from one 64-bit word: their drops must not correlate."""
    torch.manual_seed(4)
    mask, _ = keep_mask(torch.Size([400_000]), 0.5, torch.device("cpu"))
    words = mask.view(-1, 4).float()
    for i in range(4):
        for j in range(i + 1, 4):
            both = (words[:, i] * words[:, j]).mean().item()
            assert both == pytest.approx(0.25, abs=6e-3), (i, j)


def test_checkpoint_recomputation_replays_the_forward_masks(monkeypatch):
    """Under activation checkpointing backward recomputes each layer; its dropout masks come from the
    forward's tape, not from new random draws (the equality of the gradients themselves is checked in
    test_model.py's checkpointing test, attention dropout included)."""
    from admin_ds.model import build_model
    from admin_ds.model import dropout as dropout_module

    torch.manual_seed(0)
    model = build_model("admin-tiny", checkpoint_every=1, dropout=0.1).train()
    draws = []
    real_keep_mask = dropout_module.keep_mask
    monkeypatch.setattr(dropout_module, "keep_mask", lambda *args: draws.append(1) or real_keep_mask(*args))
    gen = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(4, 64, (3, 7), generator=gen), torch.randint(4, 64, (3, 6), generator=gen)
    layer_runs = []
    layer_forward = model.encoder.layers[0].forward
    model.encoder.layers[0].forward = lambda *args: layer_runs.append(1) or layer_forward(*args)
    loss, _ = model(src, tgt[:, :-1], target=tgt[:, 1:], label_smoothing=0.1)
    forward_draws = len(draws)
    loss.backward()
    assert len(layer_runs) == 2, "backward did not recompute the layer: checkpointing is off"
    # 2 + 2 layers: embeddings 2, encoder 2 x 2, decoder 2 x 3 residual dropouts.
    assert forward_draws == 12
    assert len(draws) == forward_draws, "the recomputation drew new masks"


def test_a_replay_that_does_not_match_its_recording_raises():
    """A recomputation that differs from its forward (another shape, more masks) must not silently draw
    fresh masks: it would train on gradients of a different computation."""
    from admin_ds.model.dropout import mask_tape_contexts

    layer = Dropout(0.3).train()
    record, replay = mask_tape_contexts()
    with record:
        layer(torch.ones(4, 8))
    with replay, pytest.raises(RuntimeError, match="shape"):
        layer(torch.ones(4, 9))
    record, replay = mask_tape_contexts()
    with record:
        layer(torch.ones(4, 8))
    with replay:
        layer(torch.ones(4, 8))  # the one recorded mask
        with pytest.raises(RuntimeError, match="more masks"):
            layer(torch.ones(4, 8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [1 / 65536, 0.1, 0.5, 0.9, 65535 / 65536])
def test_half_precision_masks_are_the_boolean_masks_as_numbers(dtype, p):
    """The integer-built 1.0 / 0.0 mask makes the same decisions from the same draws as the boolean one."""
    torch.manual_seed(6)
    as_bool, scale = keep_mask(torch.Size([3, 50_001]), p, torch.device("cpu"))
    torch.manual_seed(6)
    as_numbers, scale_too = keep_mask_as(torch.Size([3, 50_001]), p, torch.device("cpu"), dtype)
    assert as_numbers.dtype == dtype and as_numbers.shape == as_bool.shape and scale == scale_too
    assert torch.equal(as_numbers, as_bool.to(dtype))
    assert as_numbers.float().mean().item() == pytest.approx(1 - p, abs=4e-3)
    assert set(as_numbers.unique().tolist()) <= {0.0, 1.0}


def test_bf16_dropout_scale_and_gradient_are_exact():
    """In bf16 a kept element is x / (1 - p) rounded once (the scale is applied in fp32 arithmetic, not as a
    bf16 number), and its gradient is the same mask and scale."""
    torch.manual_seed(7)
    x = torch.randn(64, 33, dtype=torch.bfloat16, requires_grad=True)
    y = Dropout(0.1).train()(x)
    kept = y != 0
    expected = (x.detach().float() * (65536 / (65536 - round(0.1 * 65536)))).to(torch.bfloat16)
    assert torch.equal(y[kept], expected[kept]) and 0.05 < 1 - kept.float().mean().item() < 0.15
    weights = torch.randn(64, 33, dtype=torch.bfloat16)
    (y * weights).float().sum().backward()
    want = (weights.float() * kept * (65536 / (65536 - round(0.1 * 65536)))).to(torch.bfloat16)
    torch.testing.assert_close(x.grad, want, rtol=1e-2, atol=1e-2)
