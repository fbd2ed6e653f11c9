r"""The contenders: every solver, run the same way on the same float32 logits L (N x K).

Each contender takes the scores, lam, the common tolerance ``tol`` and ``max_iter``, and
returns an :class:`Output`: its column dual g (Sinkhorn-type plans, see
``equipart.bench.checker``) or its hard labels, its iteration count and its own claim of
convergence. The checker, not the contender, decides whether it reached ``tol``.

* ``equipart-<backend>``: ``equipart.assign_labels`` on every backend in
  ``equipart.backends.available()`` (found at run time).
* ``sela-ref``: the SeLa reference algorithm as the paper describes it (Asano et al.,
  ICLR 2020, section 3.1 and its appendix): in float64, P = softmax(L)^lam elementwise,
  then alternate r = (1/K) / (P^T c) and c = (1/N) / (P r), two matrix-vector products per
  iteration, stopping when sum_i |c_i / c_i' - 1| < 0.1 (checked every 10 iterations, its
  own rule). Labels argmax_j P_ij r_j, so g = log r. ``sela-ref-tol`` is the same
  iteration stopped by the common tolerance, measured from the P^T c product that the next
  iteration needs anyway.
* ``pot-sinkhorn``, ``pot-sinkhorn-log``, ``pot-sinkhorn-stabilized``: POT's
  ``ot.sinkhorn`` methods on the cost M_ij = max_k L_ik - L_ij (float64; the row shift is
  absorbed by the row scaling, so the plan is the same), a = 1/N, b = 1/K, reg = 1/lam,
  stopThr = tol / K (POT stops on ||P^T 1 - b||_2, which bounds max_j |m_j - b_j|, so the
  common tolerance is guaranteed; POT checks every 10 iterations). g = log v.
* ``pot-emd``: the exact LP ``ot.emd`` where it fits (hard labels: argmax of the plan).
* ``kmeans-constrained``: k-means-constrained's balanced assignment (min-cost flow) on the
  real-data families' features, started at the K prototypes, one iteration.
* ``ott-sinkhorn``: OTT-JAX's Sinkhorn on the same cost, when ``ott-jax`` is installed.

Every contender also declares an estimate of its memory beyond the float32 input, so the
runner can skip (and record) those that would not fit the memory budget.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .problems import REAL_FAMILIES, ProblemSpec

__all__ = ["Contender", "Output", "all_contenders", "get_contender"]

F64 = 8  # bytes per float64 entry
EMD_MAX_ENTRIES = 2_000_000
KMEANS_MAX_ENTRIES = 1_000_000
SELA_PAPER_STOP = 0.1
SELA_CHECK_EVERY = 10


@dataclass
class Output:
    """What a contender returns; the checker judges it."""

    g: np.ndarray | None = None  # column dual (K,), for plans Q_ij ~ exp(lam L_ij + g_j)
    labels: Any = None  # hard labels (N,), for hard-assignment contenders
    rows_ok: bool = True  # row scalings finite and positive (no zero / NaN rows)
    n_iter: int | None = None
    start_sweeps: float = 0.0  # work before the sweeps counted in n_iter (equipart's
    # sampled start), in sweeps of the whole scores
    converged: bool | None = None  # the contender's own claim
    loop_s: float | None = None  # time of the iterations alone, when separable
    setup_s: float = 0.0  # time spent building its own N x K arrays (included in total)
    note: str = ""


Runner = Callable[[Any, ProblemSpec, float, float, int], Output]


@dataclass(frozen=True)
class Contender:
    """A solver under test. ``run(scores, spec, lam, tol, max_iter) -> Output``."""

    name: str
    group: str
    description: str
    devices: tuple[str, ...]
    run: Runner
    extra_bytes: Callable[[int, int], int]  # memory beyond the input, estimated
    requires: tuple[str, ...] = ()  # importable modules it needs
    max_entries: int | None = None  # largest N*K it is run on
    real_data_only: bool = False
    uses_lam: bool = True  # False: the output does not depend on lam (run once per problem)

    def missing(self) -> str | None:
        """Why this contender cannot run here (a module is missing), else None."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        return None

    def out_of_scope(self, spec: ProblemSpec, device: str) -> str | None:
        """Why this contender does not apply to ``spec`` on ``device``, else None."""
        if device not in self.devices:
            return f"does not run on {device}"
        if self.real_data_only and spec.family not in REAL_FAMILIES:
            return "clusters image features: real-data families only"
        if self.max_entries is not None and spec.n * spec.k > self.max_entries:
            return f"only run up to N*K = {self.max_entries:,} (the LP / min-cost-flow cost)"
        return None


def _is_torch(array: Any) -> bool:
    return type(array).__module__.split(".", 1)[0] == "torch"


def _sync(array: Any) -> None:
    """Wait for the work that makes ``array``: CUDA's queue for a CUDA tensor, JAX's
    asynchronous dispatch for a JAX array."""
    if _is_torch(array) and array.is_cuda:
        import torch

        torch.cuda.synchronize(array.device)
    elif hasattr(array, "block_until_ready"):
        array.block_until_ready()


# --- equipart --------------------------------------------------------------------------


def _equipart_runner(backend: str) -> Runner:
    def run(scores: Any, spec: ProblemSpec, lam: float, tol: float, max_iter: int) -> Output:
        import equipart
        from equipart.solver import ConvergenceWarning

        checks: list[tuple[int, float]] = []

        def callback(iteration: int, error: float) -> None:
            checks.append((iteration, time.perf_counter()))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = equipart.assign_labels(
                scores, lam=lam, tol=tol, max_iter=max_iter, backend=backend, callback=callback
            )
        _sync(result.labels)  # (in the scores' library and device)
        loop_s = None
        if len(checks) >= 2:
            (i0, t0), (i1, t1) = checks[0], checks[-1]
            loop_s = (t1 - t0) / (i1 - i0) * result.n_iter
        return Output(
            g=np.asarray(result.state.g, dtype=np.float64),
            n_iter=result.n_iter,
            start_sweeps=result.start_sweeps,
            converged=result.converged,
            loop_s=loop_s,
        )

    return run


def _equipart_bytes(n: int, k: int) -> int:
    return 64 * 2**20 + 24 * n


# --- the SeLa reference algorithm ------------------------------------------------------


def _sela_power(scores: Any, lam: float) -> Any:
    """P^lam in float64, P = softmax(L) row-wise: exp(lam (L - logsumexp(L))), in blocks."""
    n_rows, n_labels = scores.shape
    step = max(1, (1 << 20) // n_labels)
    if _is_torch(scores):
        import torch

        power = torch.empty((n_rows, n_labels), dtype=torch.float64, device=scores.device)
        for start in range(0, n_rows, step):
            block = scores[start : start + step].to(torch.float64)
            block -= torch.logsumexp(block, dim=1, keepdim=True)
            power[start : start + step] = torch.exp(block * lam)
        return power
    power = np.empty((n_rows, n_labels), dtype=np.float64)
    for start in range(0, n_rows, step):
        block = np.asarray(scores[start : start + step], dtype=np.float64)
        top = block.max(axis=1, keepdims=True)
        block -= top + np.log(np.exp(block - top).sum(axis=1, keepdims=True))
        block *= lam
        np.exp(block, out=power[start : start + step])
    return power


def _host(vector: Any) -> np.ndarray:
    if _is_torch(vector):
        return vector.detach().cpu().numpy()
    return np.asarray(vector)


def _sela_runner(rule: str) -> Runner:
    def run(scores: Any, spec: ProblemSpec, lam: float, tol: float, max_iter: int) -> Output:
        start = time.perf_counter()
        power = _sela_power(scores, lam)
        _sync(power)
        setup_s = time.perf_counter() - start
        n_rows, n_labels = power.shape
        if _is_torch(power):
            import torch

            c = torch.full((n_rows,), 1.0 / n_rows, dtype=torch.float64, device=power.device)
        else:
            c = np.full(n_rows, 1.0 / n_rows)
        start = time.perf_counter()
        col = c @ power  # (P^T c)_j
        r = None
        converged, n_iter = False, 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for n_iter in range(1, max_iter + 1):
                if rule == "tol" and r is not None:
                    # column masses of diag(c) P diag(r), in units of the target 1/K
                    error = float(abs(r * col * n_labels - 1.0).max())
                    if error <= tol:
                        n_iter -= 1
                        converged = True
                        break
                r = (1.0 / n_labels) / col
                c_new = (1.0 / n_rows) / (power @ r)
                if rule == "paper" and (n_iter - 1) % SELA_CHECK_EVERY == 0:
                    change = abs(c / c_new - 1.0)
                    change = change[change == change].sum()  # nansum, as the paper's code
                    if float(change) < SELA_PAPER_STOP:
                        c = c_new
                        converged = True
                        break
                c = c_new
                col = c @ power
        _sync(power)
        loop_s = time.perf_counter() - start
        r_host = _host(r)
        c_host = _host(c)
        rows_ok = bool(np.isfinite(c_host).all() and (c_host > 0).all())
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.log(r_host)
        return Output(
            g=g,
            rows_ok=rows_ok,
            n_iter=n_iter,
            converged=converged,
            loop_s=loop_s,
            setup_s=setup_s,
        )

    return run


def _sela_bytes(n: int, k: int) -> int:
    return F64 * n * k + 3 * F64 * (1 << 20) + 4 * F64 * n


# --- POT -------------------------------------------------------------------------------


def _pot_cost(scores: Any) -> tuple[Any, Any, Any]:
    """(a, b, M): uniform marginals and the float64 cost M = rowmax(L) - L."""
    n_rows, n_labels = scores.shape
    if _is_torch(scores):
        import torch

        cost = scores.to(torch.float64)
        cost = cost.amax(dim=1, keepdim=True) - cost
        a = torch.full((n_rows,), 1.0 / n_rows, dtype=torch.float64, device=scores.device)
        b = torch.full((n_labels,), 1.0 / n_labels, dtype=torch.float64, device=scores.device)
        return a, b, cost
    cost = np.asarray(scores, dtype=np.float64)
    np.subtract(cost.max(axis=1, keepdims=True), cost, out=cost)
    return np.full(n_rows, 1.0 / n_rows), np.full(n_labels, 1.0 / n_labels), cost


def _pot_runner(method: str) -> Runner:
    def run(scores: Any, spec: ProblemSpec, lam: float, tol: float, max_iter: int) -> Output:
        import ot

        start = time.perf_counter()
        a, b, cost = _pot_cost(scores)
        setup_s = time.perf_counter() - start
        n_labels = scores.shape[1]
        stop = tol / n_labels
        start = time.perf_counter()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            _plan, log = ot.sinkhorn(
                a, b, cost, 1.0 / lam, method=method, numItermax=max_iter, stopThr=stop, log=True
            )
        del _plan
        _sync(cost)
        loop_s = time.perf_counter() - start
        if method == "sinkhorn_stabilized":
            n_iter = int(log["n_iter"]) + 1
            g = _host(log["beta"]) * lam
            rows_ok = bool(np.isfinite(_host(log["alpha"])).all())
        elif method == "sinkhorn_log":
            n_iter = int(log["niter"]) + 1
            g = _host(log["log_v"])
            rows_ok = bool(np.isfinite(_host(log["log_u"])).all())
        else:
            n_iter = int(log["niter"]) + 1
            with np.errstate(divide="ignore"):
                g = np.log(_host(log["v"]))
            u = _host(log["u"])
            rows_ok = bool(np.isfinite(u).all() and (u > 0).all())
        errors = [float(_host(e)) for e in log["err"]]
        converged = bool(errors) and errors[-1] < stop
        return Output(
            g=np.asarray(g, dtype=np.float64),
            rows_ok=rows_ok,
            n_iter=n_iter,
            converged=converged,
            loop_s=loop_s,
            setup_s=setup_s,
            note=f"POT checks its error every 10 iterations; last {errors[-1]:.3g}"
            if errors
            else "",
        )

    return run


def _pot_bytes(n: int, k: int) -> int:
    # M, the kernel (or -M/reg), its temporaries and the returned plan: ~5 float64 N x K
    return 5 * F64 * n * k


def _emd(scores: Any, spec: ProblemSpec, lam: float, tol: float, max_iter: int) -> Output:
    import ot

    start = time.perf_counter()
    a, b, cost = _pot_cost(scores)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    plan, log = ot.emd(a, b, cost, numItermax=10_000_000, log=True)
    loop_s = time.perf_counter() - start
    labels = plan.argmax(axis=1)
    warning = log.get("warning")
    return Output(
        labels=labels,
        converged=warning is None,
        loop_s=loop_s,
        setup_s=setup_s,
        note=f"exact LP; {warning}" if warning else "exact LP",
    )


def _emd_bytes(n: int, k: int) -> int:
    return 6 * F64 * n * k


# --- k-means-constrained ---------------------------------------------------------------


def _kmeans_constrained(
    scores: Any, spec: ProblemSpec, lam: float, tol: float, max_iter: int
) -> Output:
    from k_means_constrained import KMeansConstrained

    from .problems import family_features

    start = time.perf_counter()
    points, prototypes = family_features(spec)
    setup_s = time.perf_counter() - start
    n_rows, n_labels = scores.shape
    model = KMeansConstrained(
        n_clusters=n_labels,
        size_min=n_rows // n_labels,
        size_max=math.ceil(n_rows / n_labels),
        init=prototypes.astype(np.float64),
        n_init=1,
        max_iter=1,
        random_state=0,
    )
    start = time.perf_counter()
    labels = model.fit_predict(points.astype(np.float64))
    loop_s = time.perf_counter() - start
    return Output(
        labels=np.asarray(labels, dtype=np.int64),
        n_iter=1,
        converged=True,
        loop_s=loop_s,
        setup_s=setup_s,
        note="balanced min-cost-flow assignment to the prototypes (squared distance on "
        "unit vectors, the same ranking as the cosine scores), one k-means step",
    )


def _kmeans_bytes(n: int, k: int) -> int:
    return 12 * F64 * n * k


# --- OTT-JAX ---------------------------------------------------------------------------


def _ott(scores: Any, spec: ProblemSpec, lam: float, tol: float, max_iter: int) -> Output:
    import jax
    import jax.numpy as jnp
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    _, _, cost = _pot_cost(np.asarray(scores))
    _n_rows, n_labels = cost.shape
    geom = geometry.Geometry(cost_matrix=jnp.asarray(cost), epsilon=1.0 / lam)
    del cost
    problem = linear_problem.LinearProblem(geom)
    setup_s = time.perf_counter() - start
    # OTT stops on the L1 norm of the column-marginal error (masses summing to 1), which
    # bounds max_j |m_j - 1/K|: tol / K guarantees the common tolerance.
    solver = sinkhorn.Sinkhorn(threshold=tol / n_labels, max_iterations=max_iter, norm_error=1)
    start = time.perf_counter()
    out = solver(problem)
    g_dual = np.asarray(out.g)
    loop_s = time.perf_counter() - start
    f_dual = np.asarray(out.f)
    return Output(
        g=g_dual * lam,
        rows_ok=bool(np.isfinite(f_dual).all()),
        n_iter=int(out.n_iters),
        converged=bool(out.converged),
        loop_s=loop_s,
        setup_s=setup_s,
    )


# --- the registry ----------------------------------------------------------------------


def _equipart_backends() -> list[str]:
    from equipart.backends import available

    return available()


def _equipart_contender(backend: str) -> Contender:
    return Contender(
        name=f"equipart-{backend}",
        group="equipart",
        description=f"equipart.assign_labels(backend={backend!r})",
        devices=("cpu", "cuda") if backend in ("torch", "cupy") else ("cpu",),
        run=_equipart_runner(backend),
        extra_bytes=_equipart_bytes,
    )


def all_contenders() -> list[Contender]:
    """Every contender known, including those that cannot run here (see ``missing``)."""
    return [_equipart_contender(b) for b in _equipart_backends()] + _reference_contenders()


def _reference_contenders() -> list[Contender]:
    """The contenders other than equipart's backends (listing them imports nothing)."""
    found = [
        Contender(
            "sela-ref",
            "reference",
            "SeLa reference algorithm (float64 P^lam, two mat-vecs, the paper's stopping rule)",
            ("cpu", "cuda"),
            _sela_runner("paper"),
            _sela_bytes,
        ),
        Contender(
            "sela-ref-tol",
            "reference",
            "SeLa reference iteration stopped at the common tolerance",
            ("cpu", "cuda"),
            _sela_runner("tol"),
            _sela_bytes,
        ),
    ]
    for method in ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized"):
        found.append(
            Contender(
                "pot-" + method.replace("_", "-"),
                "pot",
                f"ot.sinkhorn(method={method!r}) in float64",
                ("cpu", "cuda"),
                _pot_runner(method),
                _pot_bytes,
                requires=("ot",),
            )
        )
    found += [
        Contender(
            "pot-emd",
            "pot",
            "ot.emd: the exact LP (hard labels)",
            ("cpu",),
            _emd,
            _emd_bytes,
            requires=("ot",),
            max_entries=EMD_MAX_ENTRIES,
            uses_lam=False,
        ),
        Contender(
            "kmeans-constrained",
            "kmeans",
            "k-means-constrained: balanced min-cost-flow assignment of image features",
            ("cpu",),
            _kmeans_constrained,
            _kmeans_bytes,
            requires=("k_means_constrained",),
            max_entries=KMEANS_MAX_ENTRIES,
            real_data_only=True,
            uses_lam=False,
        ),
        Contender(
            "ott-sinkhorn",
            "ott",
            "OTT-JAX Sinkhorn on the same cost (float64)",
            ("cpu",),
            _ott,
            _pot_bytes,
            requires=("ott", "jax"),
        ),
    ]
    return found


def get_contender(name: str) -> Contender:
    """The contender called ``name``."""
    if name.startswith("equipart-"):  # without importing every backend's library
        return _equipart_contender(name.removeprefix("equipart-"))
    contenders = {c.name: c for c in _reference_contenders()}
    if name not in contenders:
        known = sorted(contenders) + [f"equipart-{b}" for b in _equipart_backends()]
        raise ValueError(f"contender: unknown {name!r}; choose from {known}")
    return contenders[name]
