"""Shared fixtures: a prepared copy of the built-in synthetic corpus, and the shared real data folder."""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The demo's toy corpus (small), prepared with a joint 200-piece sentencepiece model."""
    from admin_ds.data import PrepareConfig, prepare, write_synthetic_corpus

    root = tmp_path_factory.mktemp("synthetic")
    prefixes = write_synthetic_corpus(root / "text", n_train=1500, n_valid=60, n_test=60, seed=0)
    out = root / "bin"
    prepare(PrepareConfig(train_prefix=prefixes["train"], valid_prefix=prefixes["valid"], test_prefix=prefixes["test"],
                          source_lang="src", target_lang="tgt", out_dir=out, vocab_size=200, workers=1,
                          progress=False))
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models decode faster on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_environment():
    """Commands run in this process (``cli_main(["train", ...])``) set the rendezvous variables (RANK,
    MASTER_PORT, ...) in os.environ, and the process group they start keeps that port. A subprocess a
    later test starts must not inherit them: it would try to listen on the same port."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
