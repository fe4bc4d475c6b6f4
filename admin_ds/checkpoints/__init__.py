"""Checkpoints: the run-directory contract, the ZeRO reader, exports, load_model and averaging."""
