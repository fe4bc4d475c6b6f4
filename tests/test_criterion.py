"""The fused label-smoothed loss (model/criterion.py) against plain autograd over the full logits."""

import pytest
import torch
import torch.nn.functional as F

from admin_ds.model.criterion import label_smoothed_loss

PAD = 0
V, D = 50, 16


def reference(features, proj, target, epsilon):
    """The textbook computation: full [B, T, V] logits, log-softmax, autograd does the rest."""
    lprobs = F.log_softmax(proj(features).double(), dim=-1)
    keep = target.ne(PAD)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    loss = (1 - epsilon) * nll + epsilon / V * -lprobs.sum(-1)
    return loss[keep].sum(), nll[keep].sum()


def inputs(dtype, bias, seed=0):
    torch.manual_seed(seed)
    proj = torch.nn.Linear(D, V, bias=bias).to(dtype)
    features = torch.randn(3, 11, D, dtype=dtype, requires_grad=True)
    target = torch.randint(4, V, (3, 11))
    target[0, 5:] = PAD  # padding predicts nothing: no loss, no gradient
    return proj, features, target


def loss_and_grads(fn, proj, features, scale=3.5):
    proj.zero_grad(set_to_none=True)
    features.grad = None
    loss, nll = fn()
    (loss * scale).backward()  # an upstream factor, as the engine's loss scale and 1/tokens are
    grads = [features.grad, proj.weight.grad] + ([proj.bias.grad] if proj.bias is not None else [])
    return loss.detach().double(), nll.detach().double(), [g.double() for g in grads]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_tokens", [None, 7, 1])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_fused_loss_matches_autograd_fp32(bias, chunk_tokens, epsilon):
    proj, features, target = inputs(torch.float32, bias)
    fused = loss_and_grads(lambda: label_smoothed_loss(features, proj, target, epsilon, PAD, chunk_tokens),
                           proj, features)
    plain = loss_and_grads(lambda: reference(features, proj, target, epsilon), proj, features)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-5, atol=1e-5)
    for got, want in zip(fused[2], plain[2]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    fused_features_grad, fused_weight_grad = fused[2][0], fused[2][1]
    assert torch.all(fused_weight_grad.abs().sum(0) > 0)
    assert torch.all(fused_features_grad[0, 5:] == 0), "padding positions must get no gradient"
    assert torch.all(fused_features_grad[0, :5].abs().sum(-1) > 0)


def test_fused_loss_bf16_is_as_accurate_as_autograd():
    """bf16 against an fp64 ground truth: the fused gradients are within bf16 rounding of it."""
    proj64, features64, target = inputs(torch.float64, False)
    exact = loss_and_grads(lambda: reference(features64, proj64, target, 0.1), proj64, features64)
    proj, _, _ = inputs(torch.bfloat16, False)
    proj.weight.data.copy_(proj64.weight.data)
    features = features64.detach().to(torch.bfloat16).requires_grad_()
    fused = loss_and_grads(lambda: label_smoothed_loss(features, proj, target, 0.1, PAD), proj, features)
    plain = loss_and_grads(lambda: reference(features, proj, target, 0.1), proj, features)
    for got, autograd_grad, truth in zip(fused[2], plain[2], exact[2]):
        error = (got - truth).norm() / truth.norm()
        assert error < 1e-2 and error < 2 * (autograd_grad - truth).norm() / truth.norm() + 1e-3


def test_tied_weight_gets_both_gradients():
    """The output projection shares the embedding table: both uses add up in its gradient."""
    proj, features, target = inputs(torch.float32, False)
    table = torch.nn.Embedding(V, D)
    proj.weight = table.weight
    src = torch.randint(0, V, (3, 11))

    def run(fn):
        table.zero_grad(set_to_none=True)
        hidden = features + table(src)
        loss, _ = fn(hidden)
        loss.backward()
        return table.weight.grad.clone()

    fused = run(lambda h: label_smoothed_loss(h, proj, target, 0.1, PAD))
    plain = run(lambda h: reference(h, proj, target, 0.1))
    torch.testing.assert_close(fused, plain.float(), rtol=1e-5, atol=1e-5)


def test_nll_is_for_logging_and_no_grad_gives_the_same_sums():
    proj, features, target = inputs(torch.float32, False)
    loss, nll = label_smoothed_loss(features, proj, target, 0.1, PAD)
    assert loss.requires_grad and not nll.requires_grad
    with torch.no_grad():
        loss_eval, nll_eval = label_smoothed_loss(features, proj, target, 0.1, PAD, chunk_tokens=4)
    torch.testing.assert_close(loss_eval, loss.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nll_eval, nll, rtol=1e-6, atol=1e-6)


def test_all_padding_gives_zero_loss_and_gradient():
    proj, features, target = inputs(torch.float32, True)
    loss, nll = label_smoothed_loss(features, proj, torch.full_like(target, PAD), 0.1, PAD)
    loss.backward()
    assert loss.item() == 0 and nll.item() == 0
    assert features.grad.abs().sum() == 0 and proj.weight.grad.abs().sum() == 0


def test_double_backward_through_the_fused_loss_raises():
    """Its backward only scales gradients computed in the forward, which are constants to autograd: a
    second derivative through it would be silently wrong, so it must refuse."""
    proj, features, target = inputs(torch.float32, bias=False)
    loss, nll = label_smoothed_loss(features, proj, target, 0.1, PAD)
    assert not nll.requires_grad  # nll_sum is for logging: no gradient
    scale = torch.tensor(2.0, requires_grad=True)  # an upstream factor that is itself differentiated
    (grad,) = torch.autograd.grad(loss * scale, features, create_graph=True)
    # Without once_differentiable this "works": d/d(scale) comes out, d/d(features) is silently missing.
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()
