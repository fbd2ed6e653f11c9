"""The backend registry: custom backends picked by ``"auto"``, and ``equipart info``."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
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


class Routed(NumpyBackend):
    """Sends float16 arrays to another backend when it is chosen (``for_scores``)."""

    name = "routed"

    def for_scores(self, scores: Any) -> registry.Backend:
        return Half() if scores.dtype == np.float16 else self


class Half(NumpyBackend):
    name = "routed"


class Stateful(NumpyBackend):
    """Counts its sweeps per solve, in the solve's state."""

    name = "stateful"

    def new_state(self) -> list[int]:
        return [0]

    def sweep_with(self, state, block, kind, lam, g):
        state[0] += 1
        return self.sweep(block, kind, lam, g)


def test_the_backend_chosen_is_routed_by_for_scores():
    registry.register("routed", Routed)
    try:
        assert type(registry.get_backend("routed", np.zeros((2, 2), np.float16))) is Half
        assert type(registry.get_backend(Routed(), np.zeros((2, 2), np.float32))) is Routed
    finally:
        del registry._CUSTOM["routed"]
        registry._load.cache_clear()


def test_for_solve_gives_a_session_with_fresh_state_or_the_backend_itself():
    plain = NumpyBackend()
    assert plain.for_solve() is plain  # no state
    backend = Stateful()
    solve, other = backend.for_solve(), backend.for_solve()
    assert isinstance(solve, registry.Session) and solve.backend is backend
    x, g = np.zeros((3, 2)), np.zeros(2)
    for _ in range(3):
        stats = solve.sweep(x, "logits", 1.0, g)
    assert solve.state == [3] and other.state == [0] and not vars(backend)
    np.testing.assert_array_equal(stats.colsum, backend.sweep(x, "logits", 1.0, g).colsum)
    assert solve.labels(x, "logits", 1.0, g).tolist() == [0, 0, 0]
    assert solve.name == "stateful" and solve.for_solve().state == [0]


def test_jax_is_registered_through_the_entry_point_group():
    """Declared in pyproject.toml and found in the installed metadata (after
    ``pip install -e .``), not hard-wired in the registry."""
    tomllib = pytest.importorskip("tomllib")  # (Python >= 3.11)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = "equipart.backends.jax:JaxBackend"
    assert pyproject["project"]["entry-points"]["equipart.backends"] == {"jax": target}
    assert "jax" not in registry._ENTRIES
    installed = {ep.name: ep.value for ep in md.entry_points(group="equipart.backends")}
    assert installed.get("jax") == target, (
        "the installed metadata lacks the jax entry point: reinstall (pip install -e .)"
    )
    pytest.importorskip("jax")
    assert "jax" in registry.available()
