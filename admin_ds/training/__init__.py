"""Training: configs, the DeepSpeed engine (the only DeepSpeed and torch.distributed user), the loop,
the learning-rate schedule and the run's metrics. Import the submodules; this package imports nothing."""
