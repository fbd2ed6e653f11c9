"""Conformance checks for backends: :func:`check_backend` runs a backend against the NumPy
reference backend, method by method, on small generated inputs.

A backend plugin (a ``equipart.backends.Backend`` subclass) passes when every method
agrees with ``NumpyBackend`` within the tolerances below, keeps the contracts of
``equipart.backends.base`` (host float64 column statistics, int64 labels, ties to the lower
index, the column-maximum guard, inputs left unmodified) and a full ``assign_labels`` solve
through it gives the NumPy backend's duals and labels.

Tolerances, by the precision the sweeps compute in (float32 for float16, bfloat16 and
float32 scores; float64 for float64 scores), for z = lam * L + g:

| quantity                    | float32              | float64 |
|-----------------------------|----------------------|---------|
| colsum, logsumexp (rel.)    | 1e-4                 | 1e-10   |
| colmax where colsum = 0     | 1e-3 (rel. and abs.) | 1e-9    |
| codes Q (abs.)              | 1e-5                 | 1e-12   |
| logprob_sum (rel.)          | 1e-5                 | 1e-10   |
| z of a label, rel. to 1 + z | 1e-5                 | 1e-12   |
| solved duals g (abs.)       | 1e-3                 | 1e-8    |
| solved codes Q (abs.)       | 1e-2                 | 1e-7    |

A label (of ``labels`` or ``top_labels``) may differ from the reference only where the
two labels' z differ by less than that z tolerance; where they are exactly equal (the
"ties" inputs: integer-valued logits with lam = 1 and an integer g, or the log-probabilities
and probabilities of such logits with g = 0, computed exactly alike in every precision) the
lower index must come first, as in the reference. The solves run to tol 1e-6 (float32)
and 1e-11 (float64) and may stop at different sweeps; their labels may differ only on rows
whose two best labels are closer than the duals' difference allows.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .backends import _load, _unavailable_reason
from .backends.base import Backend, BlockCheck, ColumnStats
from .backends.numpy import NumpyBackend
from .validation import sweep_precision

__all__ = ["ConformanceReport", "UnsupportedDtype", "assert_column_stats", "check_backend"]

DTYPES = ("float32", "float64", "float16", "bfloat16")
KINDS = ("logits", "logprobs", "probs")
LAM = 5.0
N_HEADS = 3


class UnsupportedDtype(Exception):
    """Raised by a ``to_backend`` hook for a dtype its backend does not read (the check
    skips that dtype and records the message as the reason)."""


@dataclass(frozen=True)
class Tolerance:
    """The agreement asked of a backend computing in one precision (see the module docs)."""

    rtol: float  # column sums and column log-sum-exps, relative
    colmax: float  # colmax where the column sum is 0, relative and absolute
    codes: float  # soft assignments Q, absolute
    logprob: float  # logprob_sum, relative
    z: float  # z = lam * L + g of a label, relative to 1 + |z|
    dual: float  # the duals g of a solve, absolute (natural-log units)


SOLVE_TOL = {"float32": 1e-6, "float64": 1e-11}  # the tol of the conformance solves

TOLERANCES = {
    "float32": Tolerance(rtol=1e-4, colmax=1e-3, codes=1e-5, logprob=1e-5, z=1e-5, dual=1e-3),
    "float64": Tolerance(rtol=1e-10, colmax=1e-9, codes=1e-12, logprob=1e-10, z=1e-12, dual=1e-8),
}


@dataclass
class ConformanceReport:
    """What :func:`check_backend` ran (every check listed passed) and what it skipped.

    Attributes
    ----------
    backend : str
        The backend's ``name``.
    passed : list of str
        The checks run, each as ``"method [case]"``.
    skipped : list of (str, str)
        The checks not run, each with the reason (a dtype the backend does not read).
    """

    backend: str
    passed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.backend}: {len(self.passed)} checks passed, {len(self.skipped)} skipped"]
        lines += [f"  skipped {what}: {why}" for what, why in self.skipped]
        return "\n".join(lines)


def assert_column_stats(
    got: ColumnStats, ref: ColumnStats, *, rtol: float, atol: float, colmax_atol: float
) -> None:
    """The ``ColumnStats`` contract: colsum to a tolerance; colmax exact (to
    ``colmax_atol``) where the column sum is 0, the only place the driver reads it, and
    nowhere above the reference elsewhere (any lower bound, -inf included, is allowed)."""
    np.testing.assert_allclose(got.colsum, ref.colsum, rtol=rtol, atol=atol, err_msg="colsum")
    guarded = got.colsum == 0.0
    want, have = ref.colmax[guarded], got.colmax[guarded]
    finite = np.isfinite(want)
    assert np.array_equal(want[~finite], have[~finite]), (
        f"colmax where colsum is 0: expected {want[~finite]}, got {have[~finite]}"
    )
    np.testing.assert_allclose(
        have[finite], want[finite], rtol=colmax_atol, atol=colmax_atol,
        err_msg="colmax where colsum is 0 (the driver's underflow guard reads it)",
    )
    bound = ref.colmax[~guarded]
    slack = np.where(np.isfinite(bound), colmax_atol * (1 + np.abs(bound)), 0.0)
    above = np.flatnonzero(~(got.colmax[~guarded] <= bound + slack))
    assert above.size == 0, (
        f"colmax above the column maximum at labels {np.flatnonzero(~guarded)[above][:5]}"
        " (it may be any lower bound there, never higher)"
    )


# ---------------------------------------------------------------------------------------
# inputs


def _to_bfloat16_values(x: np.ndarray) -> np.ndarray:
    """float32 holding x rounded to bfloat16 (to nearest, ties to even; NaN and inf kept)."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(
        0xFFFF0000
    )
    return np.where(np.isnan(x), np.float32(np.nan), rounded.view(np.float32))


def _host(values: np.ndarray, dtype: str) -> np.ndarray:
    """The reference's input: ``values`` in ``dtype`` (bfloat16 as float32 of its values)."""
    with np.errstate(over="ignore"):
        if dtype == "bfloat16":
            return _to_bfloat16_values(values.astype(np.float32))
        return values.astype(dtype)


def _scores(kind: str, shape: tuple[int, ...], rng: np.random.Generator, style: str):
    """float64 scores of ``kind``: ``style`` "plain" (Gaussian logits), "ties" (integers
    in [-3, 3]) or "masked" (about a fifth of the entries impossible, never label 0, and
    label K - 1 impossible everywhere)."""
    if style == "ties":
        logits = rng.integers(-3, 4, size=shape).astype(np.float64)
    else:
        logits = 2.0 * rng.standard_normal(shape)
    if style == "masked":
        mask = rng.random(shape) < 0.2
        mask[..., 0] = False
        mask[..., -1] = True
        logits[mask] = -np.inf
    if kind == "logits":
        return logits
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return np.exp(log_p) if kind == "probs" else log_p


def _dual(n_labels: int, rng: np.random.Generator, style: str, kind: str) -> np.ndarray:
    """A column dual g: for "ties", integers with logits and 0 otherwise (z is then exact,
    and equal entries give equal z), with -inf (zero-target labels) at label 1 for
    "masked"."""
    if style == "ties":
        return rng.integers(-1, 2, size=n_labels).astype(np.float64) * (kind == "logits")
    g = rng.standard_normal(n_labels)
    if style == "masked":
        g[1] = -np.inf
    return g


@dataclass(frozen=True)
class _Case:
    """One input: its description, the reference's NumPy array, the backend's array."""

    label: str
    dtype: str
    kind: str
    host: np.ndarray
    block: Any
    lam: float
    g: np.ndarray
    ties: bool = False  # exact ties: labels must equal the reference's

    @property
    def tol(self) -> Tolerance:
        return TOLERANCES[sweep_precision(self.dtype)]


# ---------------------------------------------------------------------------------------
# default conversions


def _numpy_converter(host: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        raise UnsupportedDtype("NumPy has no bfloat16 dtype (pass a to_backend hook)")
    return host


def _torch_converter(host: np.ndarray, dtype: str) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(host)).to(getattr(torch, dtype))


def _jax_converter(host: np.ndarray, dtype: str) -> Any:
    import jax.numpy as jnp

    from .backends.jax import _x64

    with _x64(True):  # (float64 stays float64)
        return jnp.asarray(host, dtype=getattr(jnp, dtype))


def _accepts(backend: Backend, library: str, probe: Callable[[Any], Any]) -> bool:
    """Whether ``backend`` accepts ``probe(module)``'s array (False: no such library)."""
    try:
        module = importlib.import_module(library)
    except ImportError:
        return False
    return bool(backend.accepts(probe(module)))


def _default_to_backend(backend: Backend) -> Callable[[np.ndarray, str], Any]:
    """NumPy arrays where the backend accepts them, else torch CPU tensors, else JAX
    arrays."""
    if backend.accepts(np.zeros((1, 1), dtype=np.float32)):
        return _numpy_converter
    if _accepts(backend, "torch", lambda torch: torch.zeros((1, 1))):
        return _torch_converter
    if _accepts(backend, "jax.numpy", lambda jnp: jnp.zeros((1, 1))):
        return _jax_converter
    raise TypeError(
        f"to_backend: backend {backend.name!r} accepts neither NumPy arrays, torch CPU "
        "tensors nor JAX arrays; pass to_backend and from_backend hooks for its array library"
    )


# ---------------------------------------------------------------------------------------
# the checker


class _Checker:
    """Runs one backend's methods against the reference and records each check."""

    def __init__(self, backend: Backend, to_backend, from_backend, rng) -> None:
        self.backend = backend
        self.ref = NumpyBackend()
        self.to_backend = to_backend
        self.from_backend = from_backend
        self.rng = rng
        self.report = ConformanceReport(str(backend.name))

    # -- plumbing --------------------------------------------------------------------

    def fail(self, method: str, case: str, message: str) -> None:
        raise AssertionError(
            f"check_backend({self.backend.name!r}): {method} [{case}]: {message}"
        )

    def run(self, method: str, case: str, check: Callable[[], None]) -> None:
        """Run one check; any failure or exception becomes an AssertionError naming
        the method and the case."""
        try:
            check()
        except AssertionError as exc:
            self.fail(method, case, str(exc).strip())
        except Exception as exc:
            self.fail(method, case, f"raised {type(exc).__name__}: {exc}")
        self.report.passed.append(f"{method} [{case}]")

    def call(
        self, case: _Case, method: str, *args: Any, backend: Backend | None = None, **kwargs: Any
    ) -> Any:
        """backend.method(case.block, *args, **kwargs) (by default the backend checked),
        checking that it left its inputs as they were (the scores and g)."""
        g_before = case.g.copy()
        out = getattr(backend or self.backend, method)(case.block, *args, **kwargs)
        same = self.host_of(case.block)
        assert np.array_equal(same, case.host, equal_nan=True), "it modified the scores"
        assert np.array_equal(case.g, g_before), "it modified g"
        return out

    def own(self, array: Any) -> np.ndarray:
        """A host copy of an N-sized result, which must be in the backend's library."""
        library = type(array).__module__.split(".", 1)[0]
        assert self.backend.accepts(array), (
            f"returned a {library} {type(array).__name__}, not an array of the backend's "
            "library (its accepts is False)"
        )
        return self.host_of(array)

    def host_of(self, array: Any) -> np.ndarray:
        out = self.from_backend(array)
        assert isinstance(out, np.ndarray), f"from_backend gave {type(out).__name__}"
        return np.array(out)

    def make(self, label: str, dtype: str, kind: str, values: np.ndarray, lam: float, g,
             ties: bool = False) -> _Case:
        host = _host(values, dtype)
        block = self.to_backend(host.copy(), dtype)  # (the backend's own memory)
        return _Case(f"{dtype}, {kind}, {label}", dtype, kind, host, block, lam, g, ties)

    def cases(self, dtype: str) -> Iterator[_Case]:
        """The 2-D inputs of one dtype: every kind in each style, and the underflow case."""
        for kind in KINDS:
            for style, shape in (("plain", (37, 11)), ("masked", (29, 9)), ("ties", (41, 7))):
                values = _scores(kind, shape, self.rng, style)
                lam = 1.0 if style == "ties" else LAM
                g = _dual(shape[1], self.rng, style, kind)
                yield self.make(f"{style} {shape}", dtype, kind, values, lam, g, style == "ties")
            yield self.underflow_case(dtype, kind)

    def underflow_case(self, dtype: str, kind: str) -> _Case:
        """Column sums that underflow to exactly 0 (g = -1000 at labels 2 and 5, -inf at
        label 3): the column-maximum (colmax) contract."""
        shape = (23, 8)
        values = _scores(kind, shape, self.rng, "plain")
        g = self.rng.standard_normal(shape[1])
        g[[2, 5]], g[3] = -1000.0, -np.inf
        return self.make(f"colmax underflow {shape}", dtype, kind, values, 1.0, g)

    # -- per-method checks ------------------------------------------------------------

    def check_array(self, case: _Case) -> None:
        b = self.backend
        self.run("accepts", case.label, lambda: _assert(b.accepts(case.block), "False"))
        self.run("shape_dtype", case.label, lambda: self.assert_shape_dtype(case))

    def assert_shape_dtype(self, case: _Case) -> None:
        shape, dtype = self.backend.shape_dtype(case.block)
        assert tuple(shape) == case.host.shape, f"shape {shape}, expected {case.host.shape}"
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        assert name == case.dtype, f"dtype {dtype!r}, expected {case.dtype!r}"

    def check_sweep(self, case: _Case, backend: Backend | None = None) -> None:
        def check() -> None:
            got = self.call(case, "sweep", case.kind, case.lam, case.g, backend=backend)
            assert isinstance(got, ColumnStats), f"returned {type(got).__name__}"
            ref = self.ref.sweep(case.host, case.kind, case.lam, case.g)
            _assert_host_vector(got.colsum, ref.colsum.shape, "colsum")
            _assert_host_vector(got.colmax, ref.colmax.shape, "colmax")
            tol = case.tol
            atol = tol.rtol * max(float(ref.colsum.max(initial=0.0)), 1e-30)
            assert_column_stats(got, ref, rtol=tol.rtol, atol=atol, colmax_atol=tol.colmax)

        self.run("sweep" if backend is None else "for_solve().sweep", case.label, check)

    def check_labels(self, case: _Case) -> None:
        def check() -> None:
            got = self.own(self.call(case, "labels", case.kind, case.lam, case.g))
            _assert_int64(got, (case.host.shape[0],))
            self.assert_best(case, got[:, None], self.ref_z(case), "label")

        self.run("labels", case.label, check)

    def check_top_labels(self, case: _Case) -> None:
        n_labels = case.host.shape[1]
        for k in sorted({1, 3, n_labels}):
            self.run("top_labels", f"{case.label}, k={k}", lambda k=k: self.top_k(case, k))

    def top_k(self, case: _Case, k: int) -> None:
        indices, values = self.call(case, "top_labels", case.kind, case.lam, case.g, k)
        indices, values = self.own(indices), self.own(values)
        n_rows = case.host.shape[0]
        _assert_int64(indices, (n_rows, k))
        assert values.shape == (n_rows, k), f"values of shape {values.shape}"
        assert np.issubdtype(values.dtype, np.floating), f"values of dtype {values.dtype}"
        distinct = (np.sort(indices, axis=1)[:, 1:] != np.sort(indices, axis=1)[:, :-1]).all()
        assert distinct, "a row repeats a label"
        z = self.ref_z(case)
        self.assert_best(case, indices, z, "top-k label")
        want = np.take_along_axis(z, indices, axis=1)
        np.testing.assert_allclose(values, want, rtol=case.tol.z, atol=case.tol.z,
                                   err_msg="values: not lam * L + g at the indices")

    def ref_z(self, case: _Case) -> np.ndarray:
        """The reference's z = lam * L + g, all of it, in the compute precision."""
        indices, values = self.ref.top_labels(case.host, case.kind, case.lam, case.g,
                                              case.host.shape[1])
        z = np.empty(values.shape, dtype=np.float64)
        np.put_along_axis(z, indices, values, axis=1)
        return z

    def assert_best(self, case: _Case, got: np.ndarray, z: np.ndarray, what: str) -> None:
        """Column p of ``got`` holds a label whose z is the p-th best of its row (to the z
        tolerance), and exactly the reference's label where the inputs are ties."""
        assert got.size == 0 or (got.min() >= 0 and got.max() < z.shape[1]), (
            f"{what}s outside [0, {z.shape[1]})"
        )
        k = got.shape[1]
        ref = self.ref.top_labels(case.host, case.kind, case.lam, case.g, k)[0]
        if case.ties:
            rows = np.flatnonzero((got != ref).any(axis=1))
            assert rows.size == 0, (
                f"{what}s differ on exact ties at rows {rows[:5]}: got {got[rows[:3]].tolist()}, "
                f"expected {ref[rows[:3]].tolist()} (ties keep the lower index first)"
            )
            return
        best = np.sort(z, axis=1)[:, ::-1][:, :k]
        picked = np.take_along_axis(z, got, axis=1)
        slack = case.tol.z * (1 + np.abs(best))
        far = ~((picked >= best - slack) | (best == -np.inf))
        rows = np.flatnonzero(far.any(axis=1))
        assert rows.size == 0, (
            f"{what}s not the best at rows {rows[:5]}: got {got[rows[:3]].tolist()}, expected "
            f"{ref[rows[:3]].tolist()}"
        )

    def check_codes(self, case: _Case) -> None:
        def check() -> None:
            got = self.own(self.call(case, "codes", case.kind, case.lam, case.g))
            assert got.shape == case.host.shape, f"shape {got.shape}"
            assert np.issubdtype(got.dtype, np.floating), f"dtype {got.dtype}"
            want = self.ref.codes(case.host, case.kind, case.lam, case.g)
            np.testing.assert_allclose(got, want, rtol=0, atol=case.tol.codes)
            sums = got.astype(np.float64).sum(axis=1)
            np.testing.assert_allclose(sums, 1.0, atol=case.tol.codes * got.shape[1],
                                       err_msg="rows of Q do not sum to 1")

        self.run("codes", case.label, check)

    def check_logprob_sum(self, case: _Case) -> None:
        def check() -> None:
            labels = self.ref.labels(case.host, case.kind, case.lam, case.g)
            mine = self.backend.from_numpy(labels, case.block)
            got = self.call(case, "logprob_sum", case.kind, mine)
            want = self.ref.logprob_sum(case.host, case.kind, labels)
            assert isinstance(got, float), f"returned {type(got).__name__}, not float"
            np.testing.assert_allclose(got, want, rtol=case.tol.logprob)
            n_labels = case.host.shape[1]
            for bad in (-1, n_labels):
                wrong = labels.copy()
                wrong[0] = bad
                _assert_raises_value_error(
                    lambda w=wrong: self.call(case, "logprob_sum", case.kind,
                                              self.backend.from_numpy(w, case.block)),
                    f"a label {bad} (K = {n_labels})",
                )

        self.run("logprob_sum", case.label, check)

    def check_column_logsumexp(self, case: _Case) -> None:
        def check() -> None:
            got = self.call(case, "column_logsumexp", case.kind, case.lam)
            want = self.ref.column_logsumexp(case.host, case.kind, case.lam)
            _assert_host_vector(got, want.shape, "result")
            _assert_close_log(got, want, case.tol.rtol)

        self.run("column_logsumexp", case.label, check)

    def check_block_check(self, case: _Case) -> None:
        def check() -> None:
            got = self.call(case, "check", case.kind)
            assert isinstance(got, BlockCheck), f"returned {type(got).__name__}"
            ref = self.ref.check(case.host, case.kind)
            _assert_block_check(got, ref, case)
            if case.kind == "logits" and getattr(self.backend, "reports_log_normaliser", False):
                asked = self.call(case, "check", case.kind, log_normaliser=True)
                assert not np.isnan(asked.log_normaliser), "log_normaliser=True: not reported"
                _assert_block_check(asked, ref, case)

        self.run("check", case.label, check)

    def check_invalid(self, dtype: str) -> None:
        """``check`` flags NaN and +inf (for every kind), in any row."""
        for bad in (np.nan, np.inf):
            for kind in KINDS:
                values = _scores(kind, (19, 6), self.rng, "plain")
                values[11, 4] = bad
                where = f"{'+inf' if bad == np.inf else 'NaN'} at row 11"
                case = self.make(where, dtype, kind, values, LAM, np.zeros(6))

                def check(case=case) -> None:
                    got = self.call(case, "check", case.kind)
                    assert not got.finite_or_neg_inf, "finite_or_neg_inf is True"

                self.run("check", case.label, check)

    def check_impossible_row(self, dtype: str) -> None:
        """``check`` of logits with a row that is -inf at every label (which input
        validation refuses by the block's min_row_max)."""
        for kind in ("logits", "logprobs"):
            values = _scores(kind, (17, 5), self.rng, "masked")
            values[6] = -np.inf
            case = self.make("row 6 all -inf", dtype, kind, values, LAM, np.zeros(5))
            self.check_block_check(case)

    def check_empty(self, dtype: str) -> None:
        """A (0, K) block, which a distributed rank without rows passes to labels, codes,
        top_labels, logprob_sum and concat (the sweeps and column_logsumexp skip it)."""
        n_labels = 6
        g = self.rng.standard_normal(n_labels)
        case = self.make("empty (0, 6)", dtype, "logits", np.zeros((0, n_labels)), LAM, g)
        self.check_labels(case)
        self.check_codes(case)
        self.run("top_labels", case.label, lambda: self.top_k(case, 2))
        self.run("concat", case.label, lambda: self.concat_empty(case))

        def logprob() -> None:
            labels = self.backend.from_numpy(np.zeros(0, dtype=np.int64), case.block)
            got = self.call(case, "logprob_sum", "logits", labels)
            assert got == 0.0, f"returned {got!r} for no rows"

        self.run("logprob_sum", case.label, logprob)

    def concat_empty(self, case: _Case) -> None:
        b, full = self.backend, self.make("", case.dtype, "logits", np.ones((3, 6)), LAM, case.g)
        parts = [b.labels(block, "logits", LAM, case.g) for block in (case.block, full.block)]
        got = self.own(b.concat(parts))
        want = self.ref.labels(full.host, "logits", LAM, case.g)
        assert np.array_equal(got, want), f"{got}, expected {want}"

    def check_join(self, case: _Case) -> None:
        """concat of row blocks' labels and codes; stack of per-block labels; to_numpy
        and from_numpy round trips."""
        b, cut = self.backend, case.host.shape[0] // 3

        def check_concat() -> None:
            parts = [case.block[:cut], case.block[cut:]]
            for method in ("labels", "codes"):
                run = getattr(b, method)
                joined = b.concat([run(part, case.kind, case.lam, case.g) for part in parts])
                whole = run(case.block, case.kind, case.lam, case.g)
                assert np.array_equal(self.own(joined), self.host_of(whole)), method
            single = b.concat([b.labels(case.block, case.kind, case.lam, case.g)])
            assert self.host_of(single).shape == (case.host.shape[0],), "a single part"

        def check_stack() -> None:
            labels = [b.labels(case.block, case.kind, case.lam, case.g)] * 2
            stacked = self.own(b.stack(labels))
            assert stacked.shape == (2, case.host.shape[0]), f"shape {stacked.shape}"
            assert np.array_equal(stacked[1], self.host_of(labels[0])), "values"

        self.run("concat", case.label, check_concat)
        self.run("stack", case.label, check_stack)
        self.run("to_numpy, from_numpy", case.label, lambda: self.round_trip(case))

    def round_trip(self, case: _Case) -> None:
        for array in (np.arange(5, dtype=np.int64), self.rng.standard_normal(7)):
            moved = self.backend.from_numpy(array, case.block)
            back = self.backend.to_numpy(moved)
            assert isinstance(back, np.ndarray), f"to_numpy gave {type(back).__name__}"
            assert back.dtype == array.dtype and np.array_equal(back, array), (
                f"{array.dtype} array {array} came back as {back!r}"
            )

    def check_for_solve(self, dtype: str) -> None:
        """A solve's backend (``for_solve()``) sweeping one block again and again as g
        moves, as the driver does (backends may keep per-solve state between sweeps)."""
        shape = (48, 80)
        values = _scores("logits", shape, self.rng, "plain")
        g = _dual(shape[1], self.rng, "plain", "logits")
        solve = self.backend.for_solve()
        self.run("for_solve", dtype, lambda: _assert(isinstance(solve, Backend), "no Backend"))
        case = self.make(f"a solve {shape}", dtype, "logits", values, LAM, g)
        for step in range(4):  # the same array each time, as in a solve
            g = g + 0.3 * self.rng.standard_normal(shape[1])
            label = f"{dtype}, logits, sweep {step + 1} of a solve {shape}"
            self.check_sweep(replace(case, label=label, g=g), backend=solve)

    def check_heads(self, dtype: str) -> None:
        """An (H, N, K) stack: shape_dtype, head views, and sweeps of those views."""
        shape = (N_HEADS, 31, 9)
        values = _scores("logits", shape, self.rng, "masked")
        stack = self.make(f"stack {shape}", dtype, "logits", values, LAM, np.zeros(9))
        self.run("shape_dtype", stack.label, lambda: self.assert_shape_dtype(stack))
        for index in range(N_HEADS):
            def check_head(index=index) -> None:
                view = self.backend.head(stack.block, index)
                got = self.own(view)
                assert np.array_equal(got, stack.host[index], equal_nan=True), "values"

            self.run("head", f"{stack.label}, head {index}", check_head)
            view = self.backend.head(stack.block, index)
            g = _dual(9, self.rng, "masked", "logits")
            head = _Case(f"{stack.label}, head {index}", dtype, "logits",
                         stack.host[index], view, LAM, g)
            self.check_sweep(head)
            self.check_labels(head)

    # -- one dtype, and the solves ---------------------------------------------------

    def check_dtype(self, dtype: str) -> bool:
        """Every method on every input of ``dtype``; False (recorded as skipped) where the
        backend does not read it."""
        reason = self.unreadable(dtype)
        if reason is not None:
            self.report.skipped.append((f"dtype {dtype}", reason))
            return False
        cases = list(self.cases(dtype))
        for case in cases:
            self.check_array(case)
            self.check_block_check(case)
            self.check_sweep(case)
            self.check_labels(case)
            self.check_top_labels(case)
            self.check_codes(case)
            self.check_logprob_sum(case)
            self.check_column_logsumexp(case)
        self.check_join(cases[0])
        self.check_invalid(dtype)
        self.check_impossible_row(dtype)
        self.check_empty(dtype)
        self.check_for_solve(dtype)
        self.check_heads(dtype)
        self.check_solve(dtype)
        return True

    def unreadable(self, dtype: str) -> str | None:
        """Why the backend does not read ``dtype`` (None: it does): the to_backend hook
        raised UnsupportedDtype, or the backend's shape_dtype raised TypeError."""
        probe = _host(np.zeros((2, 3)), dtype)
        try:
            block = self.to_backend(probe, dtype)
        except UnsupportedDtype as exc:
            return f"to_backend: {exc}"
        try:
            self.backend.shape_dtype(block)
        except TypeError as exc:
            return f"shape_dtype: {exc}"
        return None

    def check_solve(self, dtype: str) -> None:
        """``assign_labels`` through the backend against the NumPy backend: a 2-D solve
        with argmax rounding and codes, and a masked multi-head solve with balanced
        rounding."""
        values = _scores("logits", (150, 10), self.rng, "plain")
        case = self.make("solve (150, 10)", dtype, "logits", values, LAM, np.zeros(10))
        self.run("assign_labels", case.label, lambda: self.solve(case, "argmax"))
        values = _scores("logits", (N_HEADS, 90, 6), self.rng, "masked")
        values[..., -1] = 0.0  # (masked everywhere, a label could get no rows)
        case = self.make(f"solve ({N_HEADS}, 90, 6) masked", dtype, "logits", values,
                         LAM, np.zeros(6))
        self.run("assign_labels", case.label, lambda: self.solve(case, "balanced"))

    def solve(self, case: _Case, rounding: str) -> None:
        from .api import assign_labels

        # converged solves, compared as docs/design.md's reproducibility promises: at
        # SOLVE_TOL both sit within the dual tolerance of their dtype's table row (the
        # two may stop at different sweeps, e.g. after a float64 solve's coarse stage)
        tol = SOLVE_TOL[sweep_precision(case.dtype)]
        options = {"lam": case.lam, "rounding": rounding, "tol": tol, "max_iter": 2000}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (RoundingWarning: both solves alike)
            got = assign_labels(case.block, backend=self.backend, return_codes=True, **options)
            ref = assign_labels(case.host, backend="numpy", return_codes=True, **options)
        g_got, g_ref = np.asarray(got.state.g), np.asarray(ref.state.g)
        np.testing.assert_allclose(g_got, g_ref, rtol=0, atol=case.tol.dual, err_msg="duals g")
        codes = self.own(got.codes)
        np.testing.assert_allclose(codes, ref.codes, rtol=0, atol=10 * case.tol.dual,
                                   err_msg="codes")
        labels = self.own(got.labels)
        assert labels.shape == ref.labels.shape, f"labels of shape {labels.shape}"
        if rounding == "balanced":
            counts = [np.bincount(h, minlength=case.host.shape[-1]) for h in labels.reshape(
                -1, case.host.shape[-2])]
            want = [np.bincount(h, minlength=case.host.shape[-1]) for h in ref.labels.reshape(
                -1, case.host.shape[-2])]
            assert np.array_equal(counts, want), f"label counts {counts}, expected {want}"
            return
        _assert_solve_labels(labels, ref.labels, case, g_got, g_ref)


# ---------------------------------------------------------------------------------------
# assertions


def _assert(condition: bool, message: str) -> None:
    assert condition, message


def _assert_host_vector(array: Any, shape: tuple[int, ...], what: str) -> None:
    assert isinstance(array, np.ndarray), f"{what} is a {type(array).__name__}, not on the host"
    assert array.dtype == np.float64, f"{what} of dtype {array.dtype}, expected float64"
    assert array.shape == shape, f"{what} of shape {array.shape}, expected {shape}"


def _assert_int64(array: np.ndarray, shape: tuple[int, ...]) -> None:
    assert array.dtype == np.int64, f"dtype {array.dtype}, expected int64"
    assert array.shape == shape, f"shape {array.shape}, expected {shape}"


def _assert_close_log(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """Logarithms: -inf exactly where the reference has it, elsewhere close."""
    assert np.array_equal(got == -np.inf, want == -np.inf), (
        f"-inf at labels {np.flatnonzero(got == -np.inf)}, expected "
        f"{np.flatnonzero(want == -np.inf)}"
    )
    finite = want > -np.inf
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=rtol)


def _assert_raises_value_error(action: Callable[[], Any], what: str) -> None:
    try:
        action()
    except ValueError:
        return
    raise AssertionError(f"{what}: expected ValueError (no silent wrong result)")


def _assert_block_check(got: BlockCheck, ref: BlockCheck, case: _Case) -> None:
    """Flags and extremes exact; the row-sum deviation (probabilities) to 1e-6; optional
    fields (NaN or None: not reported) equal to the reference where reported."""
    assert got.finite_or_neg_inf == ref.finite_or_neg_inf, "finite_or_neg_inf"
    assert got.min_value == ref.min_value, f"min_value {got.min_value}, expected {ref.min_value}"
    for name in ("max_value", "min_row_max"):
        value, want = getattr(got, name), getattr(ref, name)
        assert np.isnan(value) or value == want, f"{name} {value}, expected {want}"
    if case.kind == "probs":
        deviation = abs(got.max_row_sum_deviation - ref.max_row_sum_deviation)
        assert deviation <= 1e-6, (
            f"max_row_sum_deviation {got.max_row_sum_deviation}, expected "
            f"{ref.max_row_sum_deviation}"
        )
    if not np.isnan(got.log_normaliser):
        assert case.kind == "logits", f"log_normaliser reported for input={case.kind!r}"
        want = _log_normaliser(case.host)
        np.testing.assert_allclose(
            got.log_normaliser, want, rtol=case.tol.logprob, err_msg="log_normaliser"
        )
    if got.support is not None:
        n_rows, n_labels = case.host.shape
        want = ref.support if ref.support is not None else np.full(n_labels, n_rows)
        assert np.array_equal(np.asarray(got.support), want), (
            f"support {got.support}, expected {want}"
        )


def _log_normaliser(host: np.ndarray) -> float:
    """sum_i log sum_j exp(x_ij) in float64 (-inf for a row that is -inf everywhere)."""
    x = np.asarray(host, dtype=np.float64)
    top = x.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shifted = np.where(np.isfinite(top), x - top, -np.inf)
        return float((top[:, 0] + np.log(np.exp(shifted).sum(axis=1))).sum())


def _assert_solve_labels(labels, ref_labels, case: _Case, g_got, g_ref) -> None:
    """Labels agree on every row whose two best labels (by the reference's z) are further
    apart than the duals' difference and the z tolerance allow."""
    z = NumpyBackend().top_labels(case.host, "logits", case.lam, g_ref, 2)[1]
    margin = (z[:, 0] - z[:, 1]).astype(np.float64)
    slack = 2 * float(np.max(np.abs(g_got - g_ref), initial=0.0)) + case.tol.z * (
        1 + np.abs(z[:, 0])
    )
    rows = np.flatnonzero((labels != ref_labels) & (margin > slack))
    assert rows.size == 0, (
        f"labels differ at rows {rows[:5]}: got {labels[rows[:5]]}, expected "
        f"{ref_labels[rows[:5]]}"
    )


# ---------------------------------------------------------------------------------------
# the entry point


def _resolve(backend: Backend | str) -> Backend:
    if isinstance(backend, str):
        backend = _load(backend)
    if not isinstance(backend, Backend):
        raise TypeError(
            "backend: expected an equipart.backends.Backend or a registered backend name, "
            f"got {type(backend).__name__}"
        )
    reason = _unavailable_reason(backend)
    if reason is not None:
        raise ValueError(f"backend: {backend.name!r} cannot run in this process ({reason})")
    return backend


def check_backend(
    backend: Backend | str,
    *,
    dtypes: tuple[str, ...] | None = None,
    rng: np.random.Generator | int | None = None,
    to_backend: Callable[[np.ndarray, str], Any] | None = None,
    from_backend: Callable[[Any], np.ndarray] | None = None,
) -> ConformanceReport:
    """Check a backend against the NumPy reference backend, method by method.

    Every ``Backend`` method runs on small generated inputs of each dtype and score kind
    (``"logits"``, ``"logprobs"``, ``"probs"``): plain Gaussian scores, masked ones (-inf
    entries, zero probabilities: impossible labels, and labels with a -inf dual), exact
    ties (which must keep the lower index first), column sums that underflow to 0 (where
    the column maximum, ``colmax``, must be exact), NaN and +inf (which ``check`` must
    flag), empty (0, K) row blocks, a solve's repeated sweeps (``for_solve``), an
    (H, N, K) stack of heads, and two full ``assign_labels`` solves (2-D with argmax
    rounding; masked multi-head with balanced rounding). Results are compared with
    ``NumpyBackend`` on the same values within the tolerances of ``equipart.testing``'s
    module documentation; inputs must come back unmodified, and N-sized results (labels,
    codes, top-k candidates) must be arrays of the backend's library (``accepts``).

    Parameters
    ----------
    backend : Backend or str
        A backend object, or the name of a registered one (``equipart.backends.register``
        or the ``equipart.backends`` entry-point group).
    dtypes : tuple of str, optional
        Score dtypes to check, of ``"float32"``, ``"float64"``, ``"float16"`` and
        ``"bfloat16"`` (default: all four). A dtype the backend does not read (its
        ``to_backend`` raises :class:`UnsupportedDtype`, or ``shape_dtype`` raises
        TypeError) is skipped and listed in the report with the reason; at least one
        must be read.
    rng : numpy.random.Generator or int, optional
        Source of the generated inputs (default: seed 0, so that runs repeat).
    to_backend : callable, optional
        ``to_backend(host, dtype) -> array``: the backend's array holding the values of
        the NumPy array ``host`` as ``dtype`` (a name). ``host`` already has that dtype,
        except for ``"bfloat16"``, which NumPy lacks: then it is float32 holding values
        exactly representable in bfloat16. Raise :class:`UnsupportedDtype` for a dtype
        the library cannot hold. Default: ``host`` itself for backends whose ``accepts``
        takes NumPy arrays (bfloat16 unsupported), else a torch CPU tensor, else a JAX
        array (made with 64-bit types enabled, so float64 stays float64).
    from_backend : callable, optional
        ``from_backend(array) -> numpy.ndarray``: a host copy of any array the backend
        returns (bfloat16 widened to float32). Default: ``backend.to_numpy``.

    Returns
    -------
    ConformanceReport
        The checks run (all passed) and those skipped, with reasons.

    Raises
    ------
    AssertionError
        At the first check that fails, naming the method, the case (dtype, score kind,
        input style and shape) and the discrepancy.
    TypeError, ValueError
        For a backend that is not a ``Backend``, or cannot run in this process.

    Examples
    --------
    A plugin's test suite runs the checks on its backend; here, a NumPy backend whose
    labels are computed its own way:

    >>> import numpy as np
    >>> from equipart.backends.numpy import NumpyBackend
    >>> from equipart.testing import check_backend
    >>> class MyBackend(NumpyBackend):
    ...     name = "mine"
    ...     def labels(self, block, kind, lam, g):
    ...         return self.top_labels(block, kind, lam, g, 1)[0][:, 0]
    >>> report = check_backend(MyBackend(), dtypes=("float32", "float64"))
    >>> print(report)  # doctest: +ELLIPSIS
    mine: ... checks passed, 0 skipped

    For another array library, pass the conversions (CuPy, say, which has no bfloat16):

    >>> def to_cupy(host, dtype):
    ...     if dtype == "bfloat16":
    ...         raise UnsupportedDtype("CuPy has no bfloat16")
    ...     return cupy.asarray(host)
    >>> check_backend("cupy", to_backend=to_cupy)  # doctest: +SKIP
    """
    backend = _resolve(backend)
    wanted = DTYPES if dtypes is None else tuple(dtypes)
    unknown = sorted(set(wanted) - set(DTYPES))
    if unknown or not wanted:
        raise ValueError(f"dtypes: expected a non-empty tuple of {DTYPES}, got {dtypes!r}")
    checker = _Checker(
        backend,
        to_backend or _default_to_backend(backend),
        from_backend or backend.to_numpy,
        np.random.default_rng(0 if rng is None else rng),
    )
    read = [dtype for dtype in wanted if checker.check_dtype(dtype)]
    if not read:
        raise AssertionError(
            f"check_backend({backend.name!r}): the backend reads none of the dtypes "
            f"{wanted}: {checker.report.skipped}"
        )
    return checker.report
