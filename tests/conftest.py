"""Shared fixtures: every core test runs on every backend installed here.

``backend_name`` is parametrised over ``equipart.backends.available()`` (plus the torch
backend's CUDA device and CuPy when a GPU is present, and ``torch-pure``: the torch
backend with ``kernel="torch"``, its blockwise torch path, which ``"auto"`` replaces on
CPU tensors by the Numba kernels where Numba is installed). ``to_backend(array, name)`` moves a
NumPy array into that backend's array library; ``to_numpy`` brings any result back.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import equipart.backends


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _register_torch_pure() -> None:
    from equipart.backends.torch import TorchBackend

    class TorchPureBackend(TorchBackend):
        name = "torch-pure"

        def __init__(self) -> None:
            super().__init__(kernel="torch")

    equipart.backends.register("torch-pure", TorchPureBackend)


def _backend_params() -> list:
    names = equipart.backends.available()
    params = [pytest.param(name, id=name) for name in names]
    if "torch" in names:
        _register_torch_pure()
        params.append(pytest.param("torch-pure", id="torch-pure"))
        if _cuda_available():
            params.append(pytest.param("torch-cuda", id="torch-cuda", marks=pytest.mark.gpu))
    return params


BACKENDS = _backend_params()


def backend_of(name: str) -> str:
    """The registry name behind a fixture name ("torch-cuda" runs the torch backend)."""
    return "torch" if name == "torch-cuda" else name


def to_backend(array: np.ndarray, name: str):
    """``array`` in the library (and on the device) that backend ``name`` reads."""
    if name in ("numpy", "numba"):
        return array
    if name.startswith("torch"):
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.cuda() if name == "torch-cuda" else tensor
    if name == "cupy":
        import cupy

        return cupy.asarray(array)
    if name == "jax":
        from equipart.backends.jax import JaxBackend

        return JaxBackend().from_numpy(array, None)  # (float64 and int64 kept)
    raise ValueError(f"unknown test backend {name!r}")


def run_python(script: str, **env: str) -> None:
    """Run ``script`` in a fresh interpreter with ``env`` added to the environment (for
    settings read at import, such as NUMBA_*); fails the test if the script fails."""
    subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, check=True, timeout=300
    )


def to_numpy(array) -> np.ndarray:
    """Any backend's array as a host NumPy array."""
    if isinstance(array, np.ndarray):
        return array
    module = type(array).__module__.split(".", 1)[0]
    if module == "torch":
        return array.detach().cpu().numpy()
    if module == "cupy":
        return array.get()
    return np.asarray(array)


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    """Each installed backend in turn (the value to pass to to_backend)."""
    return request.param
