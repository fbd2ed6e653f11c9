"""The backend registry: custom backends picked by ``"auto"``, and ``equipart info``."""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

import numpy as np
import pytest

import equipart.backends as registry
from equipart import cli
from equipart.backends.numpy import NumpyBackend


class Wrapped:
    """An array type of no known library, which only the custom backend below reads."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class WrappedBackend(NumpyBackend):
    name = "wrapped-backend"  # differs from the name it is registered under

    @staticmethod
    def accepts(scores: Any) -> bool:
        return isinstance(scores, Wrapped)


@pytest.fixture
def registered():
    registry.register("mine", WrappedBackend)
    yield
    del registry._CUSTOM["mine"]
    registry._load.cache_clear()


def test_auto_picks_a_custom_backend_registered_under_another_name(registered):
    backend = registry.get_backend("auto", Wrapped(np.zeros((4, 2), np.float32)))
    assert isinstance(backend, WrappedBackend)
    assert isinstance(registry.get_backend("mine", Wrapped(np.zeros((4, 2)))), WrappedBackend)
    with pytest.raises(TypeError, match="scores: no backend reads"):
        registry.get_backend("auto", object())


def test_info_reports_distributions_named_otherwise(monkeypatch, capsys):
    monkeypatch.setattr(md, "packages_distributions", lambda: {"cupy": ["cupy-cuda12x"]})
    monkeypatch.setattr(md, "version", lambda name: {"cupy-cuda12x": "13.4.1"}[name])
    monkeypatch.setattr(registry, "available", lambda: ["numpy"])
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cupy   cupy-cuda12x 13.4.1" in out
    assert "numpy  not installed" in out  # the stub knows only CuPy's distribution
