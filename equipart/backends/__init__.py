"""Backend registry: names to implementations, loaded lazily.

Importing equipart imports no optional library (numba, torch, cupy): a backend's module is
imported the first time it is asked for. ``backend="auto"`` picks by the array's library:
NumPy arrays and memmaps go to ``"numba"`` when Numba is installed and ``"numpy"``
otherwise, torch tensors to ``"torch"`` (CPU tensors then to the Numba kernels, see
``Backend.for_scores``), CuPy arrays to ``"cupy"``; arrays of other libraries to the first
registered backend that accepts them (JAX arrays: ``"jax"``, an entry point).

Third-party backends register a ``Backend`` subclass under the entry-point group
``equipart.backends`` (``name = "package.module:ClassName"``) or call :func:`register`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

from .base import Backend, BlockCheck, ColumnStats, Session

__all__ = [
    "Backend",
    "BlockCheck",
    "ColumnStats",
    "Session",
    "available",
    "get_backend",
    "register",
]


@dataclass(frozen=True)
class _Entry:
    target: str  # "module:Class"
    extra: str | None  # the pip extra that installs what it needs


_ENTRIES: dict[str, _Entry] = {
    "numpy": _Entry("equipart.backends.numpy:NumpyBackend", None),
    "numba": _Entry("equipart.backends.numba:NumbaBackend", "numba"),
    "torch": _Entry("equipart.backends.torch:TorchBackend", "torch"),
    "cupy": _Entry("equipart.backends.cupy:CupyBackend", "cupy"),
}
_CUSTOM: dict[str, type[Backend]] = {}
# Which backend "auto" picks for an array, by the top-level module of its type, in order.
_AUTO: dict[str, tuple[str, ...]] = {
    "numpy": ("numba", "numpy"),
    "torch": ("torch",),
    "cupy": ("cupy",),
}


def register(name: str, backend: type[Backend]) -> None:
    """Register a backend class under ``name`` (overrides an entry point of that name)."""
    if not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(f"backend: {backend!r} is not a subclass of equipart.backends.Backend")
    _CUSTOM[name] = backend
    _load.cache_clear()


@cache
def _entry_points() -> dict[str, _Entry]:
    found = {}
    for ep in metadata.entry_points(group="equipart.backends"):
        found[ep.name] = _Entry(ep.value, None)
    return found


def _all_entries() -> dict[str, _Entry]:
    return {**_ENTRIES, **_entry_points()}


@cache
def _load(name: str) -> Backend:
    if name in _CUSTOM:
        return _CUSTOM[name]()
    entries = _all_entries()
    if name not in entries:
        known = sorted(set(entries) | set(_CUSTOM))
        raise ValueError(f"backend: unknown backend {name!r}; choose 'auto' or one of {known}")
    entry = entries[name]
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not installed, or installed but unable to run here
        if isinstance(exc, ModuleNotFoundError):
            hint = f"pip install 'equipart[{entry.extra}]'" if entry.extra else "install it"
        else:
            hint = "it is installed but cannot run in this environment"
        raise ValueError(
            f"backend: {name!r} is not available here ({exc}); {hint}, or pick another "
            "(equipart.backends.available() lists those that run here)"
        ) from exc
    return getattr(module, class_name)()


def _library(array: Any) -> str:
    return type(array).__module__.split(".", 1)[0]


def get_backend(name: str | Backend, scores: Any) -> Backend:
    """The backend called ``name`` (or picked for ``scores`` when ``name == "auto"``), or
    ``name`` itself when it is a Backend object (``TorchBackend(kernel="torch")``, say),
    as routed for ``scores`` (``Backend.for_scores``: CPU tensors to the Numba kernels)."""
    if isinstance(name, Backend):
        backend, called = name, type(name).__name__
    elif isinstance(name, str):
        if name == "auto":
            return _auto_backend(scores)
        backend, called = _load(name), repr(name)
    else:
        raise TypeError(
            "backend: expected a backend name (str) or an equipart.backends.Backend, got "
            f"{type(name).__name__}"
        )
    if (reason := _unavailable_reason(backend)) is not None:
        raise ValueError(
            f"backend: {called} cannot run in this process ({reason}); pick another, or "
            "'auto' (equipart.backends.available() lists those that run here)"
        )
    if not backend.accepts(scores):
        raise TypeError(
            f"backend: {called} does not read {type(scores).__module__}."
            f"{type(scores).__name__} arrays; use backend='auto' or convert the scores"
        )
    return _routed(backend, scores)


def _auto_backend(scores: Any) -> Backend:
    """The first backend of the array's library that loads and can run here."""
    for candidate in _AUTO.get(_library(scores), ()):
        try:
            backend = _load(candidate)
        except ValueError:
            continue
        if _unavailable_reason(backend) is None:
            return _routed(backend, scores)
    for name, custom in _CUSTOM.items():
        if custom.accepts(scores) and _unavailable_reason(backend := _load(name)) is None:
            return _routed(backend, scores)
    for name in sorted(set(_entry_points()) - set(_CUSTOM)):  # plugins, imported only now
        try:
            backend = _load(name)
        except ValueError:
            continue
        if backend.accepts(scores) and _unavailable_reason(backend) is None:
            return _routed(backend, scores)
    raise TypeError(
        f"scores: no backend reads arrays of type {type(scores).__module__}."
        f"{type(scores).__name__}; pass a NumPy array, a memmap, a torch tensor or a "
        "CuPy array (or convert with np.asarray)"
    )


def _routed(backend: Any, scores: Any) -> Backend:
    """``Backend.for_scores``, also for entry-point classes that do not subclass."""
    route = getattr(backend, "for_scores", None)
    return route(scores) if route is not None else backend


def _unavailable_reason(backend: Any) -> str | None:
    """``Backend.unavailable_reason``, also for entry-point classes that do not subclass."""
    check = getattr(backend, "unavailable_reason", None)
    return check() if check is not None else None


def available() -> list[str]:
    """Names of the backends that can run here (their libraries import, and nothing about
    this process stops them, such as a fork after GNU OpenMP started)."""
    names = []
    for name in sorted(set(_all_entries()) | set(_CUSTOM)):
        try:
            backend = _load(name)
        except (ValueError, ImportError, AttributeError):
            continue
        if _unavailable_reason(backend) is None:
            names.append(name)
    return names
