"""The data pipeline on the real Tatoeba de-en corpus (skipped where ../shared/data is absent)."""

from pathlib import Path

import numpy as np
import pytest

from admin_ds.data import BatchIterator, ParallelDataset, PrepareConfig, TokenBatchSampler, Tokenizer, prepare

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba-de-en"


def test_prepare_full_tatoeba_round_trips_and_batches(tmp_path):
    if not (TATOEBA / "train.de").is_file():
        pytest.skip(f"real data not found at {TATOEBA} (the shared data folder beside the checkout)")
    meta = prepare(PrepareConfig(train_prefix=TATOEBA / "train", valid_prefix=TATOEBA / "dev",
                                 test_prefix=TATOEBA / "test", source_lang="de", target_lang="en",
                                 out_dir=tmp_path / "data", vocab_size=8000, progress=False))
    lines = {name: sum(1 for _ in open(TATOEBA / f"{file}.de", encoding="utf-8"))
             for name, file in (("train", "train"), ("valid", "dev"), ("test", "test"))}
    assert lines == {"train": 155_856, "valid": 3_165, "test": 17_565}
    for name, split in meta["splits"].items():
        assert split["lines"] == lines[name]
        assert split["examples"] == lines[name] - sum(split["dropped"].values())
        assert split["examples"] > 0.99 * lines[name]
    assert meta["dtype"] == "uint16" and 7000 < meta["vocab_size"]["src"] <= 8000

    # Round trip on the test split: decoding the stored ids gives back the text (up to NFKC normalisation).
    tokenizer = Tokenizer(tmp_path / "data" / "spm.model")
    test = ParallelDataset.load(tmp_path / "data", "test")
    english = (TATOEBA / "test.en").read_text(encoding="utf-8").splitlines()
    german = (TATOEBA / "test.de").read_text(encoding="utf-8").splitlines()
    kept = [(de.strip(), en.strip()) for de, en in zip(german, english) if de.strip() and en.strip()]
    assert len(kept) == len(test)
    exact = sum(tokenizer.decode(test[i][0].tolist()) == kept[i][0]
                and tokenizer.decode(test[i][1].tolist()) == kept[i][1] for i in range(0, len(test), 7))
    assert exact >= 0.99 * len(range(0, len(test), 7))

    # Two ranks share the training split evenly, every pair once, within the token bound.
    train = ParallelDataset.load(tmp_path / "data", "train")
    ranks = [TokenBatchSampler(train.src_sizes, train.tgt_sizes, 4096, seed=1, rank=r, world_size=2) for r in (0, 1)]
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1])
    seen = np.sort(np.concatenate([np.array(b) for rank in batches for b in rank]))
    assert np.array_equal(seen, np.arange(len(train)))
    first = next(iter(BatchIterator.build(train, 4096, seed=1)))
    assert first.src_tokens.numel() <= 4096 and first.tgt_output.numel() <= 4096
