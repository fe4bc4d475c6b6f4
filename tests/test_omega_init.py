"""--omega-init: admin-torch's closed-form ω, checked against the real admin-torch package, and one small
one-rank training run that starts from it, saves it, resumes without a new start, and exports and folds."""

import json
import subprocess
import sys

import pytest
import torch
from agreement import assert_ct2_scores_are_ours
from stock_reference import real_batch, stock_logits

import admin_ds
from admin_ds.checkpoints.zero import model_states_file
from admin_ds.cli import main as cli_main
from admin_ds.errors import UserError
from admin_ds.model import OMEGA_INITS, OmegaProfile
from admin_ds.model.omega import closed_form_omega
from admin_ds.training.config import TrainConfig

from launch_util import REPO, launcher_env

# Our name -> admin-torch's output_change_scale argument of calculate_init.
ADMIN_TORCH_SCALE = {"logn": "O(logn)", "sqrtn": "O(1)", "one": "O(n)"}
DEPTHS = [(1, 1), (2, 2), (6, 6), (18, 18), (36, 12), (60, 12), (100, 100)]


@pytest.mark.parametrize("init", list(ADMIN_TORCH_SCALE))
@pytest.mark.parametrize("encoder_layers,decoder_layers", DEPTHS)
def test_closed_form_is_admin_torchs_calculate_init(init, encoder_layers, decoder_layers):
    """Each stack's N is its number of residual sublayers: 2 per encoder layer, 3 per decoder layer."""
    admin_torch = pytest.importorskip("admin_torch", reason="the admin-torch package is not installed "
                                                            "(pip install admin-torch; it is in the test extra)")
    profile = OmegaProfile.closed_form(init, encoder_layers, decoder_layers)
    n_enc, n_dec = 2 * encoder_layers, 3 * decoder_layers
    expected_enc = admin_torch.calculate_init(n_enc, ADMIN_TORCH_SCALE[init])
    expected_dec = admin_torch.calculate_init(n_dec, ADMIN_TORCH_SCALE[init])
    assert profile.encoder == pytest.approx([expected_enc] * n_enc, rel=1e-12)
    assert profile.decoder == pytest.approx([expected_dec] * n_dec, rel=1e-12)
    if init != "one":  # the closed forms grow with depth; "one" is plain Post-LN's 1 everywhere
        assert closed_form_omega(init, n_enc + 1) > closed_form_omega(init, n_enc)


def test_a_model_filled_from_the_closed_form_holds_admin_torchs_value():
    """The ω admin-torch's as_module(N, as_parameter=True) would hold, in our model's parameters."""
    admin_torch = pytest.importorskip("admin_torch", reason="the admin-torch package is not installed "
                                                            "(pip install admin-torch; it is in the test extra)")
    model = admin_ds.build_model("admin-tiny", encoder_layers=3, decoder_layers=2)
    OmegaProfile.closed_form("logn", 3, 2).apply_(model)
    for stack, sublayers in (("encoder", 6), ("decoder", 6)):
        theirs = admin_torch.as_module(sublayers, as_parameter=True, embed_dim=model.cfg.d_model).omega.detach()
        for residual in model.residuals(stack):
            assert torch.equal(residual.omega.detach(), theirs)


def test_bad_values_are_refused_at_the_edge():
    with pytest.raises(UserError, match="--omega-init must be one of profile, logn, sqrtn, one, got 'log'"):
        TrainConfig(save_dir="x", max_steps=1, omega_init="log").validate()
    with pytest.raises(UserError, match="both say where ω starts"):
        TrainConfig(save_dir="x", max_steps=1, omega_init="logn", omega_profile="p").validate()
    assert TrainConfig(save_dir="x", max_steps=1).omega_init == "profile"
    assert OMEGA_INITS[0] == "profile"


def one_line_error(capsys, argv, match):
    try:
        code = cli_main(argv)
    except SystemExit as stop:  # argparse's own (one-line) usage errors
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err


def test_bad_command_lines_are_one_line(tmp_path, capsys, synthetic_data):
    base = ["train", "--data", str(synthetic_data), "--save-dir", str(tmp_path / "run"), "--max-steps", "1",
            "--arch", "admin-tiny"]
    one_line_error(capsys, [*base, "--omega-init", "log"], "argument --omega-init: invalid choice: 'log'")
    one_line_error(capsys, [*base, "--omega-init", "sqrtn", "--residual", "pre-ln"],
                   "--omega-init sqrtn needs --residual admin")
    one_line_error(capsys, [*base, "--omega-init", "logn", "--omega-profile", str(tmp_path / "p")],
                   "both say where ω starts")
    assert not (tmp_path / "run").exists()


def test_profile_command_writes_the_closed_form(tmp_path, capsys, synthetic_data):
    out = tmp_path / "logn.profile"
    assert cli_main(["profile", "--data", str(synthetic_data), "--arch", "admin-tiny", "--omega-init", "logn",
                     "--out", str(out)]) == 0
    assert OmegaProfile.read(out) == OmegaProfile.closed_form("logn", 2, 2)


# --- one real training run (one rank, ZeRO-0 fp32) -------------------------------------------------------
def train(data, save_dir, steps: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "admin_ds", "train", "--data", str(data), "--arch", "admin-tiny",
                           "--save-dir", str(save_dir), "--max-steps", str(steps), "--max-tokens", "300",
                           "--log-interval", "1", "--save-interval", "3", "--validate-interval", "0",
                           "--warmup-updates", "1", "--lr", "1e-2", "--no-tensorboard", "--omega-init", "logn"],
                          cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def logn_run(tmp_path_factory, synthetic_data):
    """admin-tiny trained 3 updates from the O(log N) closed form, saved, then resumed for 3 more."""
    save = tmp_path_factory.mktemp("omega-init") / "run"
    first = train(synthetic_data, save, 3)
    started = (save / "omega.profile").read_bytes(), (save / "omega.profile").stat().st_mtime_ns
    second = train(synthetic_data, save, 6)
    return save, first, second, started


def saved_omega(tag_dir) -> OmegaProfile:
    states = torch.load(model_states_file(tag_dir), weights_only=False)
    path = tag_dir.parent / f"{tag_dir.name}.profile"
    path.write_text(states["omega"])
    return OmegaProfile.read(path)


def test_training_starts_from_the_closed_form_and_keeps_it(logn_run):
    save, first, second, started = logn_run
    expected = OmegaProfile.closed_form("logn", 2, 2)  # encoder N = 4: 1.451..., decoder N = 6: 1.611...
    as_fp32 = [float(torch.tensor(v, dtype=torch.float32)) for v in expected.encoder + expected.decoder]
    start = OmegaProfile.read(save / "omega.profile")
    assert start.encoder + start.decoder == as_fp32  # what the hook wrote into the weights, read back
    assert "(from --omega-init logn" in first.stderr
    assert json.loads((save / "train_config.json").read_text())["train"]["omega_init"] == "logn"
    # The checkpoint carries ω as trained from there: within a few Adam steps of lr 1e-2 of the start,
    # and far from what profiling would have given the first sublayer (exactly 1).
    at_3 = saved_omega(save / "global_step3")
    for got, want in zip(at_3.encoder + at_3.decoder, as_fp32):
        assert abs(got - want) < 0.05
    assert at_3.encoder[0] > 1.4 and at_3.encoder + at_3.decoder != as_fp32
    # The resumed run took ω from the checkpoint: no new start, omega.profile untouched.
    assert "resumed from" in second.stderr and "(from --omega-init" not in second.stderr
    assert ((save / "omega.profile").read_bytes(), (save / "omega.profile").stat().st_mtime_ns) == started
    at_6 = saved_omega(save / "global_step6")
    model = admin_ds.load_model(save)
    held = OmegaProfile.from_model(model)
    assert held.encoder + held.decoder == pytest.approx(at_6.encoder + at_6.decoder, rel=1e-12)
    assert at_6 != at_3


def test_exports_and_folding_keep_the_outputs(logn_run, synthetic_data, tmp_path):
    save = logn_run[0]
    original = admin_ds.load_model(save)
    omegas = torch.stack([r.omega.detach() for r in original.residuals("encoder")])  # [sublayers, D]
    assert (omegas.max(dim=1).values - omegas.min(dim=1).values).min() > 1e-3, "ω should be a trained vector"
    src, tgt = real_batch(synthetic_data)
    with torch.no_grad():
        expected = original(src, tgt)
    # The fp32 safetensors export holds the same weights, ω included.
    assert cli_main(["convert", str(save), str(tmp_path / "fp32")]) == 0
    exported = admin_ds.load_model(tmp_path / "fp32").state_dict()
    for key, value in original.state_dict().items():
        assert torch.equal(exported[key], value), key
    # The plain export folds ω away; stock torch.nn layers give the same logits.
    assert cli_main(["convert", str(save), str(tmp_path / "plain"), "--plain"]) == 0
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["source_residual"] == "admin"
    assert (stock_logits(tmp_path / "plain", src, tgt) - expected).abs().max() <= 1e-4


def test_ctranslate2_export_scores_as_the_model(logn_run, tmp_path):
    pytest.importorskip("ctranslate2", reason="the ctranslate2 package is not installed (it is in the test extra)")
    from admin_ds.inference.ctranslate2_engine import CT2Model

    save = logn_run[0]
    model = admin_ds.load_model(save).eval()
    assert cli_main(["convert", str(save), str(tmp_path / "ct2"), "--format", "ctranslate2"]) == 0
    ct2 = CT2Model(tmp_path / "ct2", threads=1)
    assert_ct2_scores_are_ours(model, ct2)
