"""Parity with the Admin reference implementation: the profiled ω of a 100-100 d=512 model on a real batch
lands where the reference's own profile (WMT14 En-De, from admin-torch's example) does."""

from pathlib import Path

import pytest
import torch

from admin_ds.data import BatchIterator, ParallelDataset, PrepareConfig, prepare
from admin_ds.model import OmegaProfile, build_model, profile_omega

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TATOEBA = SHARED_DATA / "tatoeba-de-en"
REFERENCE = SHARED_DATA / "reference" / "admin-100-100-wmt14-en-de.profile.ratio.init"


@pytest.fixture(scope="module")
def real_batch(tmp_path_factory):
    if not (TATOEBA / "train.de").is_file() or not REFERENCE.is_file():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (Tatoeba de-en and the reference profile)")
    raw = tmp_path_factory.mktemp("parity")
    for split in ("train", "dev"):
        for lang in ("de", "en"):
            lines = (TATOEBA / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:20000]
            (raw / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = raw / "bin"
    prepare(PrepareConfig(train_prefix=raw / "train", valid_prefix=raw / "dev", source_lang="de", target_lang="en",
                          out_dir=out, vocab_size=8000, progress=False))
    batch = next(iter(BatchIterator.build(ParallelDataset.load(out, "train"), 768, seed=1)))
    return batch, len(ParallelDataset.load(out, "train"))


@pytest.mark.slow
def test_100_100_profile_matches_the_reference(real_batch):
    batch, _ = real_batch
    reference = OmegaProfile.read(REFERENCE)
    torch.manual_seed(1)
    model = build_model("admin-100-100", src_vocab_size=8000, tgt_vocab_size=8000)
    with torch.no_grad():  # the reference initialises the fused [3D, D] q/k/v matrix as one
        qkv = model.encoder.layers[0].self_attn.qkv_proj.weight
        assert qkv.std().item() == pytest.approx((1 / (2 * 512)) ** 0.5, rel=0.01)
    profile = profile_omega(model, batch.src_tokens, batch.tgt_input, dropout=True)
    assert len(profile.encoder) == len(reference.encoder) == 200
    assert len(profile.decoder) == len(reference.decoder) == 300
    assert profile.encoder[-1] == pytest.approx(reference.encoder[-1], rel=0.03)
    assert profile.decoder[-1] == pytest.approx(reference.decoder[-1], rel=0.03)
