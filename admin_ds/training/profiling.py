"""The reference's first stage in one process: ω of a fresh model on the first training batch."""

from __future__ import annotations

from admin_ds.data import BatchIterator, ParallelDataset, load_meta
from admin_ds.errors import UserError
from admin_ds.model import OmegaProfile, TranslationModel, profile_omega
from admin_ds.training.config import DataConfig, ModelChoice
from admin_ds.training.state import seed_everything


def profile_first_batch(choice: ModelChoice, data: DataConfig, split: str = "train",
                        dropout: bool = True, init: str = "profile") -> OmegaProfile:
    """ω of the model a one-rank ``train`` with the same --seed, model flags and --max-tokens would build,
    on the batch it would start with; with a closed-form ``init`` (``--omega-init``) the ω that train would
    start from instead, which depends on the depth alone."""
    cfg = choice.resolve(load_meta(data.data))
    if cfg.residual != "admin":
        raise UserError(f"profiling computes Admin's ω; --residual {cfg.residual} has none")
    if init != "profile":
        return OmegaProfile.closed_form(init, cfg.encoder_layers, cfg.decoder_layers)
    seed_everything(data.seed)  # the same initial weights as `train --seed` builds
    model = TranslationModel(cfg)
    batches = BatchIterator.build(ParallelDataset.load(data.data, split), data.max_tokens, seed=data.seed)
    batch = next(iter(batches))
    return profile_omega(model, batch.src_tokens, batch.tgt_input, dropout=dropout)
