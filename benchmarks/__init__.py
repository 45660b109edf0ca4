"""Timing benchmarks: pyrovae's SVI against a plain-PyTorch VAE of the same network and loss.

Run them from the repository root, e.g. ``python benchmarks/svi_step.py`` and
``python benchmarks/svi_epoch.py`` (``--help`` lists the options).
"""
