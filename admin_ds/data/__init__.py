"""Data: SentencePiece tokenization, prepared (binarised) datasets, token-based batching, a toy corpus."""

from admin_ds.data.batching import Batch, BatchIterator, TokenBatchSampler, collate, token_batches
from admin_ds.data.dataset import ParallelDataset
from admin_ds.data.meta import DataInfo, load_meta
from admin_ds.data.prepare import PrepareConfig, prepare
from admin_ds.data.synthetic import write_synthetic_corpus
from admin_ds.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_sentencepiece

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID",
    "Batch", "BatchIterator", "DataInfo", "ParallelDataset", "PrepareConfig", "TokenBatchSampler", "Tokenizer",
    "collate", "load_meta", "token_batches", "prepare", "train_sentencepiece", "write_synthetic_corpus",
]
