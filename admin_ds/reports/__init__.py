"""Reports: figures of training runs, ω profiles and checkpoints (``admin-ds plot``)."""
