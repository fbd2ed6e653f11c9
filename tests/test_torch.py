"""The torch backend on CPU: agreement with the NumPy reference, and the Triton kernel.

The fused Triton sweep is checked here on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, in a subprocess so this process's Triton stays compiled-mode);
those tests skip where Triton is not installed (CI). CUDA runs are in tests/test_gpu.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import numpy as np
import pytest
from conftest import run_python
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from array_api_compat import array_namespace  # noqa: E402

import equipart  # noqa: E402
from equipart.backends import Session, get_backend  # noqa: E402
from equipart.backends.array_api import compute_dtype  # noqa: E402
from equipart.backends.numpy import NumpyBackend  # noqa: E402
from equipart.backends.torch import NumbaTensorBackend, TorchBackend  # noqa: E402

NUMPY = NumpyBackend()
TORCH = TorchBackend(kernel="torch")
LAM = 25.0


def _problem(seed: int, n: int, k: int, kind: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(np.float32)
    if kind == "probs":
        x = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    g = rng.standard_normal(k)
    g -= g.max()
    return x.astype(np.float32), g


def _assert_stats_close(ref, got, rtol: float) -> None:
    np.testing.assert_allclose(got.colsum, ref.colsum, rtol=rtol, atol=rtol * ref.colsum.max())
    finite = np.isfinite(ref.colmax)
    np.testing.assert_array_equal(np.isfinite(got.colmax), finite)
    np.testing.assert_allclose(got.colmax[finite], ref.colmax[finite], rtol=0, atol=1e-3)


@pytest.mark.parametrize("kind", ["logits", "logprobs", "probs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_sweep_matches_numpy(kind: str, dtype) -> None:
    x, g = _problem(1, 301, 23, kind)
    g[5] = -np.inf  # a label with a zero target
    tensor = torch.from_numpy(x).to(dtype)
    reference = tensor.numpy()  # float16 / float64: NumPy reads the same stored values
    ref = NUMPY.sweep(reference, kind, LAM, g)
    got = TORCH.sweep(tensor, kind, LAM, g)
    assert got.colsum.dtype == np.float64 and got.colsum.shape == (23,)
    assert got.colmax[5] == -np.inf and got.colsum[5] == 0.0
    _assert_stats_close(ref, got, rtol=1e-5)


def test_bfloat16_matches_its_float32_upcast() -> None:
    x, g = _problem(2, 257, 31)
    tensor = torch.from_numpy(x).to(torch.bfloat16)
    upcast = tensor.to(torch.float32).numpy()
    _assert_stats_close(
        NUMPY.sweep(upcast, "logits", LAM, g), TORCH.sweep(tensor, "logits", LAM, g), 1e-5
    )
    np.testing.assert_array_equal(
        TORCH.labels(tensor, "logits", LAM, g).numpy(), NUMPY.labels(upcast, "logits", LAM, g)
    )


def test_compute_dtype() -> None:
    xp = array_namespace(torch.zeros(1))
    assert compute_dtype(xp, torch.bfloat16) == torch.float32
    assert compute_dtype(xp, torch.float16) == torch.float32
    assert compute_dtype(xp, torch.float32) == torch.float32
    assert compute_dtype(xp, torch.float64) == torch.float64
    assert compute_dtype(xp, torch.int32) == torch.float64


@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_labels_codes_logprob_match_numpy(kind: str) -> None:
    x, g = _problem(3, 200, 17, kind)
    tensor = torch.from_numpy(x)
    labels = TORCH.labels(tensor, kind, LAM, g)
    assert labels.dtype == torch.int64 and labels.device == tensor.device
    np.testing.assert_array_equal(labels.numpy(), NUMPY.labels(x, kind, LAM, g))
    codes = TORCH.codes(tensor, kind, LAM, g)
    assert codes.dtype == torch.float32
    np.testing.assert_allclose(codes.numpy(), NUMPY.codes(x, kind, LAM, g), atol=1e-6)
    np.testing.assert_allclose(codes.sum(dim=1).numpy(), 1.0, atol=1e-5)
    ref = NUMPY.logprob_sum(x, kind, labels.numpy())
    assert TORCH.logprob_sum(tensor, kind, labels) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_labels_order_and_ties(dtype) -> None:
    rng = np.random.default_rng(4)
    # integer-valued scores: many exact ties, which must keep the lower index first
    x = rng.integers(-3, 3, size=(150, 40)).astype(np.float64)
    x[0] = 0.0
    g = np.zeros(40)
    tensor = torch.from_numpy(x).to(dtype)
    indices, values = TORCH.top_labels(tensor, "logits", 1.0, g, 7)
    ref_indices, ref_values = NUMPY.top_labels(tensor.numpy(), "logits", 1.0, g, 7)
    assert indices.dtype == torch.int64 and indices.shape == (150, 7)
    np.testing.assert_array_equal(indices.numpy(), ref_indices)
    np.testing.assert_array_equal(values.numpy(), ref_values)
    np.testing.assert_array_equal(indices[0].numpy(), np.arange(7))


def test_top_labels_negative_zero_and_infinite_dual() -> None:
    x = torch.tensor([[0.0, -0.0, 1.0, -1.0, 0.0]], dtype=torch.float32)
    g = np.array([0.0, 0.0, -np.inf, 0.0, 0.0])
    indices, values = TORCH.top_labels(x, "logits", 1.0, g, 5)
    np.testing.assert_array_equal(indices.numpy()[0], [0, 1, 4, 3, 2])
    assert values[0, -1] == -torch.inf


def test_check_reports_what_numpy_does() -> None:
    x, _ = _problem(5, 90, 11, "probs")
    x[3, 2] = 0.5
    x[4, 3] = 0.0  # one zero: column 3 is supported by 89 of the 90 rows
    tensor = torch.from_numpy(x)
    assert TORCH.check(tensor, "probs") == NUMPY.check(x, "probs")
    np.testing.assert_array_equal(TORCH.check(tensor, "probs").support, (x > 0).sum(axis=0))
    bad = tensor.clone()
    bad[7, 1] = float("nan")
    assert not TORCH.check(bad, "logits").finite_or_neg_inf
    ints = torch.arange(12).reshape(3, 4)
    assert TORCH.check(ints, "logits").min_value == 0.0


def test_input_untouched_and_detached() -> None:
    x, g = _problem(6, 120, 9)
    tensor = torch.from_numpy(x.copy()).requires_grad_(True)
    before = tensor.detach().clone()
    result = equipart.assign_labels(tensor, backend="torch", return_codes=True)
    assert torch.equal(tensor.detach(), before)
    assert not result.labels.requires_grad and not result.codes.requires_grad
    assert result.labels.device == tensor.device
    assert TORCH.sweep(tensor, "logits", LAM, g).colsum.shape == (9,)


def test_non_contiguous_view_matches_copy() -> None:
    x, g = _problem(7, 64, 30)
    wide = torch.from_numpy(x)
    view = wide.t()[:20].t()  # (64, 20) with column stride 30... transposed layout
    assert not view.is_contiguous()
    ref = NUMPY.sweep(view.contiguous().numpy(), "logits", LAM, g[:20])
    _assert_stats_close(ref, TORCH.sweep(view, "logits", LAM, g[:20]), 1e-5)


@pytest.mark.parametrize("backend", ["torch", "torch-pure"])
def test_solve_agrees_with_numpy_backend(backend) -> None:
    """Both CPU paths: "torch" (the Numba kernels where installed: float32 objective
    terms, so 1e-6) and "torch-pure" (the blockwise torch path, float64 terms: 1e-9)."""
    x, _ = _problem(8, 600, 12)
    ref = equipart.assign_labels(x, backend="numpy")
    got = equipart.assign_labels(torch.from_numpy(x), backend=backend)
    assert got.converged and got.n_iter == ref.n_iter
    np.testing.assert_allclose(got.state.g, ref.state.g, atol=1e-5)
    np.testing.assert_array_equal(got.labels.numpy(), ref.labels)
    rel = 1e-9 if backend == "torch-pure" else 1e-6
    assert got.objective == pytest.approx(ref.objective, rel=rel)


def test_cpu_tensors_run_the_numba_kernels_where_installed() -> None:
    """ "auto" routes float16/32/64 CPU tensors to the Numba backend when the backend is
    chosen (``for_scores``): its kernels read a NumPy view (no copy; same results as
    NumbaBackend on tensor.numpy()); kernel="torch", integer tensors and the backend object
    itself keep the torch path."""
    pytest.importorskip("numba")
    from equipart.backends.numba import NumbaBackend

    x, g = _problem(10, 300, 20)
    tensor = torch.from_numpy(x)
    auto = get_backend("torch", tensor)
    assert isinstance(auto, NumbaTensorBackend) and get_backend("auto", tensor) is auto
    want = NumbaBackend().sweep(x, "logits", LAM, g)
    got = auto.sweep(tensor, "logits", LAM, g)
    np.testing.assert_array_equal(got.colsum, want.colsum)
    labels = auto.labels(tensor, "logits", LAM, g)
    assert isinstance(labels, torch.Tensor)
    np.testing.assert_array_equal(labels.numpy(), NumbaBackend().labels(x, "logits", LAM, g))
    assert TORCH.for_scores(tensor) is TORCH
    assert type(get_backend("torch", tensor.to(torch.int32))) is TorchBackend
    assert auto._view(tensor).__array_interface__["data"][0] == tensor.data_ptr()
    with pytest.raises(TypeError, match=r"scores: a cpu torch.int32 block reached the Numba"):
        auto.sweep(tensor.to(torch.int32), "logits", LAM, g)
    solve = auto.for_solve()
    assert isinstance(solve, Session) and solve.backend is auto
    x, g = _problem(10, 300, 70)  # (K >= 64: warm sweeps apply)
    for _ in range(2):  # the Numba backend's warm sweeps, in this solve's state
        got = solve.sweep(torch.from_numpy(x), "logits", LAM, g)
    assert solve.state.warm_rows == (300, 0)
    np.testing.assert_allclose(got.colsum, NumbaBackend().sweep(x, "logits", LAM, g).colsum,
                               rtol=1e-6)


@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_cpu_bfloat16_runs_the_numba_kernels_on_its_bits(kind) -> None:
    """bfloat16 CPU tensors (no NumPy view exists) go to the Numba kernels as an int16 view
    of their bits, widened to float32 as the kernels read them: every pass gives what the
    Numba backend gives on the float32 upcast, here also for a strided view."""
    numba_backend = pytest.importorskip("equipart.backends.numba")
    host = numba_backend.NumbaBackend()
    x, g = _problem(11, 61, 40, kind)
    g[3] = -np.inf  # a closed label
    for tensor in (
        torch.from_numpy(x).to(torch.bfloat16),
        torch.from_numpy(x).to(torch.bfloat16).T.contiguous().T,
    ):
        upcast = tensor.float().numpy()
        auto = TorchBackend().for_scores(tensor)
        view = auto._view(tensor)
        assert isinstance(view, numba_backend.BFloat16Bits)
        assert view.bits.__array_interface__["data"][0] == tensor.data_ptr()  # no copy
        _assert_stats_close(
            host.sweep(upcast, kind, LAM, g), auto.sweep(tensor, kind, LAM, g), 1e-12
        )
        for method in ("labels", "codes"):
            got, want = (
                getattr(auto, method)(tensor, kind, LAM, g),
                getattr(host, method)(upcast, kind, LAM, g),
            )
            assert isinstance(got, torch.Tensor)
            np.testing.assert_array_equal(got.numpy(), want)
        indices, values = auto.top_labels(tensor, kind, LAM, g, 3)
        want_indices, want_values = host.top_labels(upcast, kind, LAM, g, 3)
        np.testing.assert_array_equal(indices.numpy(), want_indices)
        np.testing.assert_array_equal(values.numpy(), want_values)
        labels = host.labels(upcast, kind, LAM, g)
        assert auto.logprob_sum(tensor, kind, torch.from_numpy(labels)) == pytest.approx(
            host.logprob_sum(upcast, kind, labels), rel=1e-6
        )
        got_check, want_check = auto.check(tensor, kind), host.check(upcast, kind)
        assert got_check == want_check
        if kind == "probs":
            np.testing.assert_array_equal(got_check.support, want_check.support)
    original = torch.from_numpy(x).to(torch.bfloat16)
    assert torch.equal(tensor, original)  # read, never written
    if kind == "probs":  # (bfloat16 row sums pass a looser check than their upcast)
        return
    # the same sweeps on both (accelerated iterates agree at convergence, not bit for bit)
    got = equipart.assign_labels(tensor, input=kind, acceleration="none")
    want = equipart.assign_labels(
        original.float().numpy(), input=kind, backend="numba", acceleration="none"
    )
    assert got.converged and got.n_iter == want.n_iter
    np.testing.assert_array_equal(got.labels.numpy(), want.labels)
    np.testing.assert_allclose(got.state.g, want.state.g, atol=1e-5)


def test_multi_head_stack() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 200, 8)).astype(np.float32)
    got = equipart.assign_labels(torch.from_numpy(x), backend="auto")
    assert got.labels.shape == (3, 200) and isinstance(got.labels, torch.Tensor)
    for h in range(3):
        single = equipart.assign_labels(x[h], backend="numpy")
        np.testing.assert_allclose(got.state.g[h], single.state.g, atol=1e-5)


def test_unknown_kernel_is_named() -> None:
    with pytest.raises(ValueError, match="kernel"):
        TorchBackend(kernel="cuda")


def test_importing_equipart_does_not_import_torch() -> None:
    code = "import sys, equipart; assert 'torch' not in sys.modules, 'torch imported'"
    run_python(code)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 80),
    k=st.integers(1, 40),
    lam=st.floats(0.1, 200.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_sweep_property(n: int, k: int, lam: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, k)) * 3).astype(np.float32)
    g = rng.standard_normal(k) * 5
    g -= g.max()
    ref = NUMPY.sweep(x, "logits", lam, g)
    got = TORCH.sweep(torch.from_numpy(x), "logits", lam, g)
    _assert_stats_close(ref, got, 1e-5)
    assert got.colsum.sum() == pytest.approx(n, rel=1e-5)  # every row carries one unit


def test_for_solve_holds_a_fresh_state_for_the_backend() -> None:
    """Each solve's loop gets a session: the backend's methods (a subclass's included)
    with a state of its own; kernel="torch" keeps no state (the backend itself)."""

    class Mine(TorchBackend):
        def labels(self, block, kind, lam, g):
            return "mine"

    base = Mine(capture_graphs=False)
    solve, again = base.for_solve(), base.for_solve()
    assert isinstance(solve, Session) and solve.backend is base and solve.name == "torch"
    assert solve.state.graphs == {} and solve.state is not again.state
    assert not solve.state.with_max and solve.labels(None, "logits", LAM, None) == "mine"
    assert not hasattr(base, "state")
    pure = Mine(kernel="torch")
    assert pure.for_solve() is pure


# ---- the Triton kernel under the interpreter -------------------------------------------

_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import numpy as np, torch
    import triton.runtime.interpreter as interp

    # numpy >= 2.4 refuses int() of a size-1 array, which Triton 3.6's interpreter does for
    # scalar loop bounds; read the scalar with .item() instead (interpreter only).
    _patch = interp._patch_lang_tensor
    def _patched(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))
    interp._patch_lang_tensor = _patched

    from equipart.backends.numpy import NumpyBackend
    from equipart.backends.torch import TorchBackend
    from equipart.backends import _triton_kernels as tk
    from column_stats_checks import assert_column_stats

    numpy_backend, triton_backend = NumpyBackend(), TorchBackend(kernel="triton")
    rng = np.random.default_rng(0)

    def variants(block_k):
        # every kernel variant at two tile heights (the grid stride and padded rows differ)
        yield None  # the default config for (K, dtype)
        for block_m in (1, 4):
            yield tk.SweepConfig(block_m, block_k, 4, 2)
            yield tk.SweepConfig(block_m, block_k, 4, 3, "pipe", prefetch=True)
            yield tk.SweepConfig(block_m, block_k, 4, 2, "pipe")
            yield tk.SweepConfig(block_m, block_k, 4, 2, "async", num_stages=2)
            # split: rows held as up to 4 (K <= block_k) or 2 chunks of one width
            yield tk.SweepConfig(block_m, max(1, block_k // 4), 4, 3, "split")
            yield tk.SweepConfig(block_m, block_k // 2, 4, 2, "split")
            yield tk.SweepConfig(block_m, max(1, block_k // 4), 4, 2, "split", num_stages=3)

    def check(tensor, kind, g, lam=25.0):
        ref = numpy_backend.sweep(tensor.to(torch.float32).contiguous().numpy(), kind, lam, g)
        block_k = max(16, 1 << (tensor.shape[1] - 1).bit_length())
        g_t = torch.as_tensor(g).to(torch.float32)
        fin = np.isfinite(ref.colmax)
        for config in variants(block_k):
            where = (tuple(tensor.shape), tensor.stride(), tensor.dtype, kind, config)
            if config is None:  # the backend: column sums, colmax where one underflowed
                got = triton_backend.sweep(tensor, kind, lam, g)
                assert_column_stats(
                    got, ref, rtol=1e-5, atol=1e-5 * ref.colsum.max(), colmax_atol=1e-3
                )
                continue
            for with_max in (False, True):
                s, m = tk.sweep_stats(tensor, g_t, lam, kind == "probs", config, with_max)
                np.testing.assert_allclose(
                    s.numpy(), ref.colsum, rtol=1e-5, atol=1e-5 * ref.colsum.max(),
                    err_msg=str(where),
                )  # fmt: skip
                if not with_max:
                    assert m is None
                    continue
                colmax = m.double().numpy()
                assert (np.isfinite(colmax) == fin).all(), where
                np.testing.assert_allclose(
                    colmax[fin], ref.colmax[fin], atol=1e-3, err_msg=str(where)
                )

    def problem(n, k, kind):
        x = rng.standard_normal((n, k)).astype(np.float32) * 2
        if kind == "probs":
            x = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
            x[0, 0] = 0.0  # log 0 = -inf inside the kernel
            x[n // 2, : k // 2] = 0.0
        g = rng.standard_normal(k) * 3
        g -= g.max()
        if k > 3:
            g[2] = -np.inf  # a label with a zero target
        return x, g

    cases = [
        (1, 1, torch.float32, "logits"),
        (37, 5, torch.float32, "logits"),
        (101, 33, torch.bfloat16, "logits"),
        (64, 16, torch.float16, "logprobs"),
        (90, 70, torch.float32, "probs"),
        (43, 24, torch.bfloat16, "probs"),
        (45, 9, torch.float16, "logits"),
        (130, 48, torch.float32, "logits"),
    ]
    for n, k, dtype, kind in cases:
        x, g = problem(n, k, kind)
        check(torch.from_numpy(x).to(dtype), kind, g)
    # strided views are read through their strides: a column stride of 2, a row stride of
    # 40 for K = 24 (8-aligned rows), and rows starting off a 16-byte boundary (K odd)
    wide = torch.from_numpy(rng.standard_normal((50, 40)).astype(np.float32))
    check(wide[:, ::2], "logits", np.zeros(20), lam=3.0)
    x, g = problem(33, 40, "logits")
    check(torch.from_numpy(x)[:, :24], "logits", g[:24])
    x, g = problem(34, 13, "logits")
    check(torch.from_numpy(x).to(torch.bfloat16)[1:], "logits", g)
    # -inf logits (impossible labels, a whole column of them included) get exactly no
    # mass, as in the NumPy sweep
    x, g = problem(30, 20, "logits")
    x[::3, 5] = -np.inf
    x[:, 7] = -np.inf
    check(torch.from_numpy(x).to(torch.bfloat16), "logits", g)
    # a label nobody wants: its column sum underflows to 0, and the backend's sweep must
    # return its exact column maximum (the driver's lower bound on log m)
    x, g = problem(40, 12, "logits")
    g[4] = -5e3
    stats = triton_backend.sweep(torch.from_numpy(x), "logits", 25.0, g)
    ref = numpy_backend.sweep(x, "logits", 25.0, g)
    assert stats.colsum[4] == 0.0 and np.isfinite(stats.colmax[4])
    np.testing.assert_allclose(stats.colmax[4], ref.colmax[4], rtol=1e-6)
    print("ok")
    """
)


@pytest.mark.skipif(find_spec("triton") is None, reason="Triton is not installed")
def test_triton_sweep_kernel_under_interpreter() -> None:
    here = os.path.dirname(os.path.abspath(__file__))  # for column_stats_checks
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", _INTERPRETER_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_bfloat16_probabilities_are_accepted():
    """A softmax rounded to bfloat16 misses a row sum of 1 by its rounding, here by more
    than the 1e-3 allowed to other dtypes; that must pass the check (and the exact LP,
    which widens bfloat16 on the host), and a row off by 10% must not."""
    probs = torch.softmax(torch.randn(500, 6, generator=torch.Generator().manual_seed(0)), 1)
    half = probs.to(torch.bfloat16)
    assert (half.double().sum(dim=1) - 1).abs().max() > 1e-3
    result = equipart.assign_labels(half, input="probs")
    assert result.converged
    exact = equipart.assign_labels(half, input="probs", rounding="exact")
    assert set(torch.bincount(exact.labels, minlength=6).tolist()) == {83, 84}  # 500 / 6
    with pytest.raises(ValueError, match=r"scores.*summing to 1"):
        equipart.assign_labels(half * 1.1, input="probs")


def test_cpu_tensors_fall_back_to_torch_when_numba_cannot_run():
    """With Numba installed but unable to run (here NUMBA_DISABLE_JIT=1), CPU tensors take
    the torch path with a warning instead of failing."""
    script = (
        "import warnings, torch, equipart\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    result = equipart.assign_labels(torch.randn(200, 10))\n"
        "assert result.converged\n"
        "assert any('Numba kernels for CPU tensors' in str(w.message) for w in caught)\n"
    )
    run_python(script, NUMBA_DISABLE_JIT="1")


def test_cpu_bfloat16_blocks_of_growing_size_stream():
    """Streamed bfloat16 blocks of different sizes solve as the whole tensor does."""
    pytest.importorskip("numba")
    x = (torch.randn(600, 16, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16)
    streamed = equipart.assign_labels(
        equipart.RowBlocks(lambda: iter([x[:100], x[100:]])), backend="torch"
    )
    whole = equipart.assign_labels(x, backend="torch")
    assert streamed.converged and streamed.n_iter == whole.n_iter
    np.testing.assert_array_equal(streamed.labels.numpy(), whole.labels.numpy())


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"])
def test_tensors_torch_cannot_reduce_are_refused_naming_scores(dtype):
    """float8 and the wide unsigned tensors failed inside torch ("min_values_cpu" not
    implemented) instead of naming the argument and the way out."""
    if not hasattr(torch, dtype):
        pytest.skip(f"this torch has no {dtype}")
    x = torch.zeros(10, 4).to(getattr(torch, dtype))
    with pytest.raises(TypeError, match=rf"scores: torch.{dtype} tensors .*scores.float\(\)"):
        equipart.assign_labels(x)
