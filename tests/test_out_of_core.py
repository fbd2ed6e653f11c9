"""Out-of-core scores: memmaps, .npy paths and block factories, streamed every sweep.

Each form must give the in-memory solve's result (labels identical, duals to float64
round-off: only the order of the float64 column sums differs), and a read-only memmap must
not accumulate the file in the process's resident memory.
"""

from __future__ import annotations

import mmap
import re
import warnings

import numpy as np
import pytest

import equipart.sources
from equipart import ConvergenceWarning, Counts, RowBlocks, assign_labels, sinkhorn_codes
from equipart.sources import FactoryStream, InMemory, StreamedArray, open_source

LAM = 10.0


def _scores(shape=(301, 7), seed=0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of about 1 KiB, so even small test arrays stream in many blocks."""
    monkeypatch.setattr(equipart.sources, "BLOCK_BYTES", 1024)


def _same_solution(streamed, reference) -> None:
    np.testing.assert_array_equal(streamed.labels, reference.labels)
    np.testing.assert_allclose(streamed.state.g, reference.state.g, rtol=0, atol=1e-10)
    assert streamed.n_iter == reference.n_iter
    assert streamed.state.shape == reference.state.shape
    assert streamed.objective == pytest.approx(reference.objective, rel=1e-12)


@pytest.mark.parametrize("shape", [(301, 7), (3, 301, 7)], ids=["one-head", "three-heads"])
def test_npy_path_and_memmap_match_in_memory(tmp_path, small_blocks, shape):
    scores = _scores(shape)
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    reference = assign_labels(scores, LAM, tol=1e-6, backend="numpy", return_codes=True)
    mapped = np.load(path, mmap_mode="r")
    _engine, source = open_source(mapped, "numpy")
    assert isinstance(source, StreamedArray) and source.block_rows == 1024 // (7 * 4)
    for given in (path, str(path), mapped):
        streamed = assign_labels(given, LAM, tol=1e-6, backend="numpy", return_codes=True)
        _same_solution(streamed, reference)
        np.testing.assert_allclose(streamed.codes, reference.codes, atol=1e-7)
    np.testing.assert_array_equal(np.load(path), scores)  # the file is untouched


def test_block_factory_matches_in_memory_with_and_without_sizes(small_blocks):
    scores = _scores((250, 5), dtype=np.float64)
    sizes = np.array([70, 60, 50, 40, 30])
    reference = assign_labels(scores, LAM, tol=1e-9, backend="numpy", marginals=Counts(sizes))
    calls = []

    def blocks():
        calls.append(1)
        return (scores[i : i + 33] for i in range(0, 250, 33))

    for given in (blocks, RowBlocks(blocks), RowBlocks(blocks, n_rows=250, n_labels=5)):
        calls.clear()
        streamed = assign_labels(given, LAM, tol=1e-9, backend="numpy", marginals=Counts(sizes))
        _same_solution(streamed, reference)
        # one pass to open (and count), one to validate, one per sweep, labels, objective
        assert len(calls) == streamed.n_iter + 4
    codes = sinkhorn_codes(RowBlocks(blocks), 0.5, 3, backend="numpy")
    np.testing.assert_allclose(codes, sinkhorn_codes(scores, 0.5, 3, backend="numpy"), atol=1e-12)


@pytest.mark.parametrize("rounding", ["argmax", "balanced"])
def test_loader_reusing_one_buffer_gets_the_in_memory_labels(rounding):
    """A loader that refills one buffer per block (as data loaders do): every pass, the
    rounders' included, must use each block while it holds that block's rows."""
    scores = _scores((250, 5), dtype=np.float64)
    buffer = np.empty((50, 5))

    def blocks():
        for start in range(0, 250, 50):
            buffer[:] = scores[start : start + 50]
            yield buffer

    reference = assign_labels(scores, LAM, backend="numpy", rounding=rounding)
    streamed = assign_labels(RowBlocks(blocks), LAM, backend="numpy", rounding=rounding)
    np.testing.assert_array_equal(streamed.labels, reference.labels)
    assert streamed.objective == pytest.approx(reference.objective, rel=1e-9)


def test_block_factory_rejects_inconsistent_blocks():
    scores = _scores((40, 4))
    passes = []

    def shrinking():  # yields fewer rows from the third pass on
        passes.append(1)
        yield scores if len(passes) < 3 else scores[:30]

    with pytest.raises(
        ValueError,
        match=r"yielded 30 rows on this pass, expected N=40",
    ):
        assign_labels(RowBlocks(shrinking), LAM, backend="numpy")
    with pytest.raises(ValueError, match=r"^scores: the RowBlocks factory yielded at least 80"):
        assign_labels(RowBlocks(lambda: iter([scores, scores]), n_rows=50, n_labels=4), LAM)
    with pytest.raises(ValueError, match=r"^scores: the RowBlocks factory yielded no blocks"):
        assign_labels(RowBlocks(lambda: iter([])), LAM)
    with pytest.raises(ValueError, match="every block must be 2-D with K=4 columns"):
        assign_labels(RowBlocks(lambda: iter([scores, scores[:, :3]])), LAM, backend="numpy")
    with pytest.raises(ValueError, match=r"^scores: RowBlocks blocks must be 2-D"):
        assign_labels(RowBlocks(lambda: iter([scores[None]])), LAM)
    with pytest.raises(TypeError, match=r"^scores: RowBlocks needs a callable"):
        RowBlocks(scores)
    with pytest.raises(ValueError, match=r"^n_rows: expected None or an integer"):
        RowBlocks(lambda: iter([scores]), n_rows=-1)


def test_bad_paths_and_arrays_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"^scores: .* is not a file"):
        assign_labels(str(tmp_path / "missing.npy"), LAM)
    archive = tmp_path / "two.npz"
    np.savez(archive, a=_scores())
    with pytest.raises(ValueError, match=r"^scores: .*not a single \.npy array"):
        assign_labels(archive, LAM)
    text = tmp_path / "notes.npy"
    text.write_text("not an array")
    with pytest.raises(ValueError, match=r"^scores: could not open .* as a \.npy array"):
        assign_labels(text, LAM)
    nan = _scores()
    nan[5, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match=r"^scores: contains NaN"):
        assign_labels(tmp_path / "nan.npy", LAM)


def test_in_memory_arrays_are_not_streamed():
    _, source = open_source(_scores(), "numpy")
    assert isinstance(source, InMemory)
    _engine, source = open_source(lambda: iter([_scores()]), "numpy")
    assert isinstance(source, FactoryStream) and source.n_rows == 301


def _rss_file_bytes() -> int:
    with open("/proc/self/status") as status:
        match = re.search(r"^RssFile:\s+(\d+) kB", status.read(), re.MULTILINE)
    return int(match.group(1)) * 1024


@pytest.fixture
def rss_file():
    """``_rss_file_bytes``, where maps are released (madvise) and RssFile is reported."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        pytest.skip("needs madvise")
    try:
        _rss_file_bytes()
    except (OSError, AttributeError):
        pytest.skip("no /proc/self/status RssFile here")
    return _rss_file_bytes


def test_read_only_memmap_does_not_stay_resident(tmp_path, monkeypatch, rss_file):
    """Sweeping a 48 MB file in 1 MiB blocks keeps the mapped file pages near one block."""
    monkeypatch.setattr(equipart.sources, "BLOCK_BYTES", 1 << 20)
    path = tmp_path / "big.npy"
    n_rows, n_labels = 120_000, 100
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, n_labels))
    for start in range(0, n_rows, 20_000):
        rows[start : start + 20_000] = _scores((20_000, n_labels), seed=start)
    rows.flush()
    del rows
    file_bytes = n_rows * n_labels * 4
    np.save(tmp_path / "small.npy", _scores())
    peak = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name in ("small.npy", "big.npy"):  # the small solve maps every library first
            peak.clear()
            before = rss_file()
            result = assign_labels(
                np.load(tmp_path / name, mmap_mode="r"),
                2.0,
                tol=0.0,
                max_iter=3,
                backend="numpy",
                callback=lambda i, e, start=before: peak.append(rss_file() - start),
            )
    assert result.labels.shape == (n_rows,) and len(peak) == 3
    assert max(peak) < file_bytes / 8, (max(peak), file_bytes)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_streamed_half_precision_matches_in_memory(tmp_path, small_blocks, dtype):
    """float16 .npy files (memmaps, read ahead block by block) and bfloat16 CPU tensors
    streamed from a factory go through the Numba kernels, which read them as stored, and
    give the labels of the same scores held in memory (duals and codes to float32
    rounding: the sums run over other blocks)."""
    pytest.importorskip("numba")
    scores = _scores((301, 70), seed=3)
    if dtype == "float16":
        whole = scores.astype(np.float16)
        np.save(tmp_path / "half.npy", whole)
        given: object = tmp_path / "half.npy"
        engine, source = open_source(np.load(given, mmap_mode="r"))
        assert engine.name == "numba" and isinstance(source, StreamedArray)
    else:
        torch = pytest.importorskip("torch")
        whole = torch.from_numpy(scores).to(torch.bfloat16)
        given = RowBlocks(lambda: (whole[i : i + 40] for i in range(0, 301, 40)))
    reference = assign_labels(whole, LAM, tol=1e-6, return_codes=True)
    streamed = assign_labels(given, LAM, tol=1e-6, return_codes=True)
    # float32 column sums over other row blocks: the same solution up to their rounding
    labels, codes = (np.asarray(getattr(a, "numpy", lambda a=a: a)()) for a in
                     (streamed.labels, streamed.codes))  # fmt: skip
    want_labels, want_codes = (np.asarray(getattr(a, "numpy", lambda a=a: a)()) for a in
                               (reference.labels, reference.codes))  # fmt: skip
    np.testing.assert_array_equal(labels, want_labels)
    assert streamed.converged and abs(streamed.n_iter - reference.n_iter) <= 1
    np.testing.assert_allclose(streamed.state.g, reference.state.g, rtol=0, atol=1e-5)
    np.testing.assert_allclose(codes, want_codes, rtol=0, atol=1e-5)


def test_pass_stopped_early_leaves_no_block_mapped(tmp_path, monkeypatch, rss_file):
    """A consumer that stops after one block: the block it held and the one read ahead
    for it are both released."""
    monkeypatch.setattr(equipart.sources, "BLOCK_BYTES", 4 << 20)
    path = tmp_path / "scores.npy"
    np.save(path, _scores((100_000, 100)))
    _engine, source = open_source(np.load(path, mmap_mode="r"), "numpy")
    before = rss_file()
    passes = source.blocks(0)
    first = next(passes)
    assert float(first.sum()) == pytest.approx(float(_scores((100_000, 100))[: len(first)].sum()))
    passes.close()
    assert rss_file() - before < 1 << 20
