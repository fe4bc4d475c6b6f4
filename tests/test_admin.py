"""Admin's ω math and the profile file (docs/admin.md)."""

import math

import pytest
import torch

from admin_ds.errors import UserError
from admin_ds.model import OmegaProfile, build_model, profile_omega


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("admin-tiny", encoder_layers=3, decoder_layers=2, **overrides)


def batch():
    gen = torch.Generator().manual_seed(3)
    src, tgt = torch.randint(4, 64, (5, 9), generator=gen), torch.randint(4, 64, (5, 7), generator=gen)
    src[1, 6:] = 0
    return src, tgt


def manual_stack_profile(x, sublayers):
    """docs/admin.md's recurrence written out directly over (residual, branch) pairs, dropout off: ω_i = r,
    r = sqrt(Var(ω_i x) + Var(f_i(x))), starting at r = 1. Returns (ω per sublayer, the stack's output)."""
    r, omegas = 1.0, []
    for residual, branch in sublayers:
        omegas.append(r)
        f = branch(x)
        v_in, v_out = (r * x).var().item(), f.var().item()
        x = residual.norm(r * x + f)
        r = math.sqrt(v_in + v_out)
    return omegas, x


def manual_encoder_profile(model, src):
    mask = src.eq(0)
    return manual_stack_profile(model.src_embed(src), [
        pair for layer in model.encoder.layers
        for pair in ((layer.self_attn_residual, lambda h, layer=layer: layer.self_attn(h, key_padding_mask=mask)),
                     (layer.ffn_residual, layer.ffn))])


def manual_decoder_profile(model, src, tgt):
    """Self-attention (causal), cross-attention over the encoder output (computed with the profiled
    encoder ω, as the profiling forward does), FFN per layer, with an accumulator of its own."""
    mask = src.eq(0)
    _, memory = manual_encoder_profile(model, src)
    omegas, _ = manual_stack_profile(model.tgt_embed(tgt), [
        pair for layer in model.decoder.layers
        for pair in ((layer.self_attn_residual, lambda h, layer=layer: layer.self_attn(h, causal=True)),
                     (layer.cross_attn_residual,
                      lambda h, layer=layer: layer.cross_attn(h, memory, key_padding_mask=mask)),
                     (layer.ffn_residual, layer.ffn))])
    return omegas


def test_profile_follows_the_recurrence():
    model, (src, tgt) = tiny(dropout=0.0), batch()
    profile = profile_omega(model, src, tgt, dropout=False)
    model.eval()
    with torch.no_grad():
        expected_encoder, _ = manual_encoder_profile(model, src)
        expected_decoder = manual_decoder_profile(model, src, tgt)
    assert len(profile.encoder) == 6 and len(profile.decoder) == 6
    assert profile.encoder == pytest.approx(expected_encoder, rel=1e-5)
    assert profile.decoder == pytest.approx(expected_decoder, rel=1e-5)
    assert profile.encoder[0] == 1.0 and profile.decoder[0] == 1.0
    # ω grows with the variance the branches add, in both stacks.
    for values in (profile.encoder, profile.decoder):
        assert all(b > a for a, b in zip(values, values[1:]))


def test_profiling_leaves_parameters_and_mode_alone():
    model, (src, tgt) = tiny(), batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    profile_omega(model, src, tgt, dropout=True)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(r.profiler is None for s in ("encoder", "decoder") for r in model.residuals(s))


def test_profile_in_training_mode_uses_dropout():
    model, (src, tgt) = tiny(dropout=0.3), batch()
    torch.manual_seed(1)
    a = profile_omega(model, src, tgt, dropout=True)
    torch.manual_seed(2)
    b = profile_omega(model, src, tgt, dropout=True)
    c = profile_omega(model, src, tgt, dropout=False)
    assert a.encoder != b.encoder and c.encoder == profile_omega(model, src, tgt, dropout=False).encoder


def test_apply_sets_every_omega_vector():
    model, (src, tgt) = tiny(), batch()
    profile = profile_omega(model, src, tgt)
    profile.apply_(model)
    for stack, values in (("encoder", profile.encoder), ("decoder", profile.decoder)):
        for residual, value in zip(model.residuals(stack), values):
            assert torch.allclose(residual.omega, torch.full_like(residual.omega, value))
    assert OmegaProfile.from_model(model).encoder == pytest.approx(profile.encoder)


def test_profile_needs_admin():
    model, (src, tgt) = tiny(residual="post-ln"), batch()
    with pytest.raises(UserError, match="admin"):
        profile_omega(model, src, tgt)


def test_file_round_trip_in_reference_format(tmp_path):
    profile = OmegaProfile([1.0, 1.25, 1.5, 1.75], [1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    path = tmp_path / "profile.ratio.init"
    profile.write(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "1 1.0" and lines[4] == "1 1.0" and lines[3].startswith("4 ")
    assert OmegaProfile.read(path) == profile
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"


def test_a_100_100_file_loads_into_a_100_100_model(tmp_path):
    path = tmp_path / "p"
    enc = [1.0] + [math.sqrt(1 + 0.8 * i) for i in range(1, 200)]
    dec = [1.0] + [math.sqrt(1 + 1.2 * i) for i in range(1, 300)]
    path.write_text("".join(f"{i} {v}\n" for block in (enc, dec) for i, v in enumerate(block, 1)))
    profile = OmegaProfile.read(path).check_fits(100, 100)
    assert len(profile.encoder) == 200 and len(profile.decoder) == 300
    assert 9 < profile.encoder[-1] < 15
    with torch.device("meta"):
        model = build_model("admin-100-100", d_model=8, nhead=2, ffn_dim=8, src_vocab_size=16, tgt_vocab_size=16)
    assert len(list(profile.targets(model))) == 500
    with pytest.raises(UserError, match="needs 120 and 36"):
        profile.check_fits(60, 12)


@pytest.mark.parametrize("text,message", [
    ("1 1.0\n2 1.2\n1 1.0\n3 1.1\n", ":4: index 3 out of order"),
    ("1 1.0\n2 nan\n1 1.0\n", ":2: ω must be a finite positive number"),
    ("1 1.0\n2 -1.5\n1 1.0\n", ":2: ω must be a finite positive number"),
    ("1 1.0\n2 0\n1 1.0\n", ":2: ω must be a finite positive number"),
    ("1 1.0\nhello\n", ":2: expected 'INDEX VALUE'"),
    ("1 1.0 7\n", ":1: expected 'INDEX VALUE'"),
    ("1 1.0\n2 1.1\n", "found 1 block"),
    ("2 1.0\n", ":1: index 2 out of order"),
])
def test_bad_profile_files_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        OmegaProfile.read(path)


def test_missing_and_binary_profile_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        OmegaProfile.read(tmp_path / "missing")
    (tmp_path / "bin").write_bytes(b"1 1.0\n\xff\xfe\n")
    with pytest.raises(UserError, match="invalid UTF-8"):
        OmegaProfile.read(tmp_path / "bin")
