"""Shared fixtures: tiny configurations that train in seconds on two CPU cores."""

from __future__ import annotations

import pytest
import torch

from selflabel.config import Config

torch.set_num_threads(2)


@pytest.fixture
def tiny_config() -> Config:
    """scikit-learn digits, a 1/8-width AlexNet-BN: a few seconds per run on a CPU."""
    return Config(
        dataset="digits", train_size=400, test_size=200, arch="alexnet", width=0.125, fc=32,
        heads=2, clusters=10, epochs=2, batch_size=50, probe_epochs=3,
        device="cpu", progress=False, seed=3,
    )  # fmt: skip
