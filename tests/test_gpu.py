"""The torch backend on CUDA (Triton kernel and torch fallback) and the CuPy backend.

Every test here needs a CUDA device and skips without one (or without torch / CuPy);
collection never imports a GPU library that is missing.
"""

from __future__ import annotations

import warnings
from importlib.util import find_spec

import numpy as np
import pytest
from column_stats_checks import assert_column_stats

import equipart
from equipart.backends.numpy import NumpyBackend

pytestmark = pytest.mark.gpu
NUMPY = NumpyBackend()
LAM = 25.0


def _torch_cuda():
    if find_spec("torch") is None:
        pytest.skip("torch is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


def _cupy():
    if find_spec("cupy") is None:
        pytest.skip("CuPy is not installed")
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")
    return cupy


def _problem(seed: int, n: int, k: int, kind: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, k)) * 2).astype(np.float32)
    if kind == "probs":
        x = (np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)).astype(np.float32)
    g = rng.standard_normal(k) * 3
    g -= g.max()
    g[1] = -np.inf
    return x, g


def _assert_stats_close(ref, got) -> None:
    assert_column_stats(got, ref, rtol=1e-4, atol=1e-5 * ref.colsum.max(), colmax_atol=1e-3)


@pytest.mark.parametrize("kernel", ["triton", "torch"])
@pytest.mark.parametrize("kind", ["logits", "probs"])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16", "float64"])
@pytest.mark.parametrize("shape", [(1, 3), (1031, 3000), (70, 9000), (50, 17000)])
def test_torch_cuda_sweep_matches_numpy(kernel, kind, dtype_name, shape) -> None:
    torch = _torch_cuda()
    from equipart.backends.torch import TorchBackend, triton_available

    if kernel == "triton" and not triton_available():
        pytest.skip("Triton is not installed")
    x, g = _problem(sum(shape), *shape, kind)
    tensor = torch.from_numpy(x).to(getattr(torch, dtype_name)).cuda()
    backend = TorchBackend(kernel=kernel)
    ref = NUMPY.sweep(
        tensor.cpu().to(torch.float64 if dtype_name == "float64" else torch.float32).numpy(),
        kind,
        LAM,
        g,
    )
    got = backend.sweep(tensor, kind, LAM, g)
    _assert_stats_close(ref, got)
    # determinism: the same grid merges partials in the same order
    again = backend.sweep(tensor, kind, LAM, g)
    np.testing.assert_array_equal(got.colsum, again.colsum)


@pytest.mark.parametrize(
    "variant, prefetch, num_stages, block_m, num_warps",
    [
        ("pipe", True, 1, 1, 8),
        ("pipe", False, 1, 2, 16),
        ("async", False, 3, 1, 8),
        ("split", False, 1, 1, 4),
        ("split", False, 1, 2, 8),
        ("split", False, 3, 1, 4),
        ("split", False, 4, 2, 4),
    ],
)
def test_triton_variants_match_numpy(variant, prefetch, num_stages, block_m, num_warps) -> None:
    """Each kernel variant on CUDA, where the alignment hints and pipelining are real."""
    torch = _torch_cuda()
    from equipart.backends.torch import triton_available

    if not triton_available():
        pytest.skip("Triton is not installed")
    from equipart.backends import _triton_kernels as tk

    def wide(n, k, pad, kind, dtype, seed):  # an (n, k) view of rows ``pad`` wider
        x, g = _problem(seed, n, k + pad, kind)
        if kind == "probs":
            x[n // 2, : k // 2] = 0.0
        return torch.from_numpy(x).to(dtype).cuda()[:, :k], g[:k]

    cases = [  # K = 3000: 8-aligned rows; 1001: scalar loads; offset and strided views
        (*wide(1031, 3000, 0, "logits", torch.float32, 1), "logits"),
        (*wide(1031, 3000, 8, "probs", torch.bfloat16, 2), "probs"),
        (*wide(257, 1001, 0, "logits", torch.float16, 3), "logits"),
        (*wide(1, 3, 0, "probs", torch.float32, 4), "probs"),
    ]
    x, g = wide(90, 1001, 0, "probs", torch.float32, 5)
    cases.append((x[1:], g, "probs"))  # rows start 4 bytes off a 16-byte boundary
    x, g = wide(64, 600, 0, "logits", torch.bfloat16, 6)
    cases.append((x[:, ::2], g[::2], "logits"))  # column stride 2
    for tensor, g, kind in cases:
        block_k = max(16, 1 << (tensor.shape[1] - 1).bit_length())
        if variant == "split":  # up to 4 chunks of a quarter of the padded row
            block_k //= 4
        config = tk.SweepConfig(
            block_m, block_k, num_warps, 2, variant, prefetch=prefetch, num_stages=num_stages
        )
        ref = NUMPY.sweep(tensor.float().cpu().numpy(), kind, LAM, g)
        g_t = torch.as_tensor(g, device="cuda").float()
        for with_max in (False, True):
            s, m = tk.sweep_stats(tensor, g_t, LAM, kind == "probs", config, with_max)
            colsum = s.cpu().numpy()
            np.testing.assert_allclose(
                colsum, ref.colsum, rtol=1e-4, atol=1e-5 * ref.colsum.max()
            )
            if with_max:
                colmax = m.double().cpu().numpy()
                finite = np.isfinite(ref.colmax)
                np.testing.assert_array_equal(np.isfinite(colmax), finite)
                np.testing.assert_allclose(colmax[finite], ref.colmax[finite], atol=1e-3)


def test_torch_cuda_solve_outputs_on_device_and_agrees() -> None:
    torch = _torch_cuda()
    x, _ = _problem(3, 5000, 64)
    # over-relaxed steps follow the same sweeps on both backends, so the duals compare to
    # 1e-4 at tol 1e-3 (accelerated ones agree within docs/design.md's dual tolerance)
    same = {"acceleration": "overrelax"}
    ref = equipart.assign_labels(x, backend="numpy", return_codes=True, **same)
    tensor = torch.from_numpy(x).cuda()
    before = tensor.clone()
    got = equipart.assign_labels(tensor, return_codes=True, **same)
    assert torch.equal(tensor, before)
    assert got.labels.is_cuda and got.labels.dtype == torch.int64 and got.codes.is_cuda
    np.testing.assert_allclose(got.state.g, ref.state.g, atol=1e-4)
    assert (got.labels.cpu().numpy() != ref.labels).mean() < 1e-3
    np.testing.assert_allclose(got.codes.cpu().numpy(), ref.codes, atol=1e-4)


def test_torch_cuda_multi_head_and_top_labels() -> None:
    torch = _torch_cuda()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2000, 40)).astype(np.float32)
    got = equipart.assign_labels(torch.from_numpy(x).cuda())
    assert got.labels.shape == (3, 2000) and got.labels.is_cuda
    from equipart.backends.torch import TorchBackend

    ties = torch.from_numpy(rng.integers(-2, 2, size=(500, 40)).astype(np.float32)).cuda()
    indices, values = TorchBackend().top_labels(ties, "logits", 1.0, np.zeros(40), 6)
    ref_i, ref_v = NUMPY.top_labels(ties.cpu().numpy(), "logits", 1.0, np.zeros(40), 6)
    np.testing.assert_array_equal(indices.cpu().numpy(), ref_i)
    np.testing.assert_array_equal(values.cpu().numpy(), ref_v)


def test_torch_cuda_sweep_allocates_no_n_by_k() -> None:
    torch = _torch_cuda()
    from equipart.backends.torch import TorchBackend

    tensor = torch.randn(200_000, 1000, device="cuda")
    g = np.zeros(1000)
    backend = TorchBackend()
    backend.sweep(tensor, "logits", LAM, g)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    backend.sweep(tensor, "logits", LAM, g)
    assert torch.cuda.max_memory_allocated() - base < 64 * 2**20  # partials only


@pytest.mark.parametrize("kind", ["logits", "probs"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape", [(1, 3), (1031, 3000), (700, 9000)])
def test_cupy_sweep_matches_numpy(kind, dtype, shape) -> None:
    cp = _cupy()
    from equipart.backends.cupy import CupyBackend

    x, g = _problem(sum(shape), *shape, kind)
    stored = x.astype(dtype)
    got = CupyBackend().sweep(cp.asarray(stored), kind, LAM, g)
    _assert_stats_close(NUMPY.sweep(stored, kind, LAM, g), got)


def test_captured_sweeps_are_the_eager_sweeps() -> None:
    """A solve's backend replays a CUDA graph from a tensor's second sweep on: bit for bit
    the eager kernel's column sums, for new duals, new contents of the tensor, other
    heads and a new lam (which drops the previous stage's graphs)."""
    torch = _torch_cuda()
    from equipart.backends.torch import TorchBackend, triton_available

    if not triton_available():
        pytest.skip("Triton is not installed")
    eager, solving = TorchBackend(kernel="triton"), TorchBackend().for_solve()
    x, g = _problem(12, 3000, 500)
    heads = torch.from_numpy(np.stack([x, x[::-1].copy()])).cuda()
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        # a failed capture warns and falls back to eager sweeps: here it must fail the
        # test with the capture's own exception in the message
        warnings.simplefilter("error", RuntimeWarning)
        for lam in (LAM, 2 * LAM):
            for step in range(4):
                dual = g + rng.standard_normal(g.shape) * 0.1
                if step == 3:
                    heads.mul_(0.5)  # the graph reads the tensor as it is at each replay
                for head in heads:
                    got = solving.sweep(head, "logits", lam, dual)
                    want = eager.sweep(head, "logits", lam, dual)
                    np.testing.assert_array_equal(got.colsum, want.colsum)
                    np.testing.assert_array_equal(got.colmax, want.colmax)
    assert sum(v is not None for v in solving.state.graphs.values()) == 2  # this lam's heads


@pytest.mark.parametrize("backend_name", ["torch-triton", "cupy"])
def test_underflowed_column_gets_its_exact_colmax(backend_name) -> None:
    """A label nobody wants (g_j far below the rest): its column sum underflows to 0 in
    the fused kernels, and the sweep must then return its exact column maximum."""
    x, g = _problem(11, 2000, 300)
    g[7] = -5e3
    if backend_name == "cupy":
        cp = _cupy()
        from equipart.backends.cupy import CupyBackend

        got = CupyBackend().sweep(cp.asarray(x), "logits", LAM, g)
    else:
        torch = _torch_cuda()
        from equipart.backends.torch import TorchBackend, triton_available

        if not triton_available():
            pytest.skip("Triton is not installed")
        got = TorchBackend(kernel="triton").sweep(torch.from_numpy(x).cuda(), "logits", LAM, g)
    ref = NUMPY.sweep(x, "logits", LAM, g)
    assert got.colsum[7] == 0.0 and np.isfinite(got.colmax[7])
    np.testing.assert_allclose(got.colmax[7], ref.colmax[7], rtol=1e-6)
    _assert_stats_close(ref, got)
    if backend_name == "torch-triton":  # a solve's backend: in-sweep maxima from then on
        solving = TorchBackend().for_solve()
        tensor = torch.from_numpy(x).cuda()
        for _ in range(3):  # a rerun with maxima, then maxima in every sweep
            again = solving.sweep(tensor, "logits", LAM, g)
            assert solving.state.with_max
            np.testing.assert_allclose(again.colmax[7], ref.colmax[7], rtol=1e-6)
            _assert_stats_close(ref, again)


def test_cupy_solve_agrees_with_numpy() -> None:
    cp = _cupy()
    x, _ = _problem(6, 4000, 50)
    same = {"acceleration": "overrelax"}  # the same sweeps on both (as in the torch test)
    ref = equipart.assign_labels(x, backend="numpy", **same)
    array = cp.asarray(x)
    got = equipart.assign_labels(array, backend="cupy", return_codes=True, **same)
    assert isinstance(got.labels, cp.ndarray) and got.labels.dtype == np.int64
    np.testing.assert_allclose(got.state.g, ref.state.g, atol=1e-4)
    assert (got.labels.get() != ref.labels).mean() < 1e-3
    from equipart.backends.cupy import CupyBackend

    ties = np.random.default_rng(7).integers(-2, 2, size=(300, 30)).astype(np.float32)
    indices, _ = CupyBackend().top_labels(cp.asarray(ties), "logits", 1.0, np.zeros(30), 5)
    ref_i, _ = NUMPY.top_labels(ties, "logits", 1.0, np.zeros(30), 5)
    np.testing.assert_array_equal(indices.get(), ref_i)
