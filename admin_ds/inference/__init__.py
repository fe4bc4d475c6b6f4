"""Inference: beam search with incremental decoding, translating text, scoring with sacrebleu."""
