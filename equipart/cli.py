"""The ``equipart`` command: ``demo``, ``solve``, ``bench`` and ``info``."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .api import assign_labels
from .backends import get_backend
from .marginals import Counts, Marginal, Prior, Uniform
from .result import Assignment
from .solver import ConvergenceWarning
from .validation import (
    check_acceleration,
    check_kind,
    check_lam,
    check_positive_int,
    check_rounding,
    check_tol,
)


class CliError(Exception):
    """A user error reported as one line on stderr (exit status 2)."""


def _load_scores(path: str) -> np.ndarray:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"scores file not found: {path}")
    return _load_npy(file, "scores", mmap=True)


def _load_npy(path: Path | str, what: str, mmap: bool = False) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CliError(
            f"{what} file {path} is not a readable .npy array (corrupt, truncated, or holding "
            f"pickled objects, which equipart does not load): {exc}"
        ) from exc
    if not isinstance(array, np.ndarray):
        raise CliError(f"{what} file {path} is an .npz archive; save one array with np.save")
    return array


def _load_marginals(path: str | None) -> Marginal | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise CliError(f"marginals file not found: {path}")
    values = _load_npy(path, "marginals")
    whole = values.dtype.kind in "iu" or (
        values.dtype.kind == "f"
        and np.all(np.isfinite(values))
        and np.all(values == np.round(values))
        and values.sum() > 1.0 + 1e-6
    )
    return Counts(values) if whole else Prior(values)


def _summary(result: Assignment, seconds: float, marginals: Marginal | None, lam: float) -> str:
    labels = _to_host(result.labels)
    labels = labels.reshape(-1, labels.shape[-1])
    n_rows, n_labels = labels.shape[1], result.state.shape[-1]
    sizes = np.stack([np.bincount(row, minlength=n_labels) for row in labels])
    lo, hi = (marginals or Uniform()).bind(n_rows, n_labels, lam).count_bounds()
    outside = np.maximum(sizes - hi, lo - sizes).clip(min=0)
    return "\n".join(
        [
            f"solved {result.state.shape} in {seconds:.2f} s: {result.n_iter} iterations, "
            f"converged={result.converged}, error={result.error:.3g}, "
            f"rounding={result.rounding}",
            f"objective (mean log-probability of the labels): {result.objective:.6g}",
            f"label sizes: min {sizes.min()}, median {np.median(sizes):g}, max {sizes.max()}; "
            f"{np.count_nonzero(outside)} of {sizes.size} outside their target's integer "
            f"sizes (largest miss: {outside.max()})"
            + ("; --rounding balanced meets them exactly" if outside.any() else ""),
        ]
    )


def _to_host(labels: object) -> np.ndarray:
    """Labels from any backend as a NumPy array (through that backend's ``to_numpy``)."""
    return get_backend("auto", labels).to_numpy(labels)


def _out_path(out: str | None, inputs: Sequence[str | None] = ()) -> Path | None:
    """The file ``np.save`` will write (it appends .npy), checked before any work: its
    folder exists and is writable, an existing file there is writable and is none of the
    ``inputs`` (the scores and marginals files, which it would replace)."""
    if out is None:
        return None
    if Path(out).is_dir() or out.endswith(("/", "\\")):
        raise CliError(f"--out: {out} is a folder; give a file name")
    path = Path(out if out.endswith(".npy") else out + ".npy")
    if not path.parent.is_dir():
        raise CliError(f"--out: folder {path.parent} does not exist")
    if path.is_dir():
        raise CliError(f"--out: {path} is a folder; give a file name")
    if not os.access(path.parent, os.W_OK):
        raise CliError(f"--out: folder {path.parent} is not writable")
    if path.exists():
        for given in inputs:
            if given is not None and _same_file(path, given):
                raise CliError(
                    f"--out: {path} is the input file {given}; writing the labels there "
                    "would replace it, give another file name"
                )
        if not os.access(path, os.W_OK):
            raise CliError(f"--out: the existing file {path} is not writable")
    return path


def _same_file(a: Path | str, b: Path | str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # b missing or unreadable: reported where it is loaded
        return False


def _save_labels(out: Path, labels: np.ndarray) -> None:
    try:
        np.save(out, labels)
    except OSError as exc:
        raise CliError(f"--out: cannot write the labels to {out} ({exc})") from exc


def _check_solver_options(args: argparse.Namespace) -> None:
    """The solver's own checks of the options, run before any scores are read or made;
    each message is given the option's name."""
    checks = [
        ("lam", "--lam", lambda: check_lam(args.lam)),
        ("tol", "--tol", lambda: check_tol(args.tol)),
        ("max_iter", "--max-iter", lambda: check_positive_int(args.max_iter, "max_iter")),
        ("rounding", "--rounding", lambda: check_rounding(args.rounding)),
        ("input", "--input", lambda: check_kind(args.input)),
        ("acceleration", "--acceleration", lambda: check_acceleration(args.acceleration)),
    ]
    for name, option, check in checks:
        try:
            check()
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if message.startswith(f"{name}: "):
                message = message[len(name) + 2 :]
            raise CliError(f"{option}: {message}") from exc


def _for_backend(scores: np.ndarray, backend: str) -> object:
    """The scores in the array library a named backend reads (a .npy file is opened as a
    memmap, which the NumPy and Numba backends stream; torch and CuPy get a copy)."""
    if backend not in ("torch", "cupy"):
        return scores
    try:
        library = __import__(backend)
    except ImportError as exc:
        raise CliError(
            f"--backend: {backend!r} is not available here ({exc}); pip install "
            f"'equipart[{backend}]', or use --backend auto"
        ) from exc
    return library.from_numpy(np.array(scores)) if backend == "torch" else library.asarray(scores)


def _warm_up(scores: object, args: argparse.Namespace) -> float:
    """Sweep the first rows twice, untimed: Numba compiles its kernels at first use (then
    caches them on disk), which would otherwise be counted as solve time. Best effort: the
    rows are read as logits under Uniform (whatever the input and marginals), and any
    error is left to the real solve, which checks everything. Seconds spent."""
    start = time.perf_counter()
    if len(getattr(scores, "shape", ())) < 2:  # the real solve names the shape
        return 0.0
    head = scores[..., : min(256, scores.shape[-2]), :]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assign_labels(head, lam=args.lam, max_iter=2, backend=args.backend)
    except (ValueError, TypeError):
        pass
    return time.perf_counter() - start


def _solve_and_report(scores, args, marginals: Marginal | None) -> Assignment:
    scores = _for_backend(scores, args.backend)
    engine = get_backend(args.backend, scores)
    warm_up = _warm_up(scores, args)
    note = ""
    if warm_up > 0.5:
        note = f", first-use compile and warm-up {warm_up:.1f} s before the timing"
    print(f"backend: {engine.name}{note}")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = assign_labels(
            scores,
            lam=args.lam,
            marginals=marginals,
            rounding=args.rounding,
            tol=args.tol,
            max_iter=args.max_iter,
            input=args.input,
            backend=args.backend,
            acceleration=args.acceleration,
        )
    print(_summary(result, time.perf_counter() - start, marginals, args.lam))
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return result


def _cmd_solve(args: argparse.Namespace) -> int:
    _check_solver_options(args)
    if args.out is None and not args.no_save:
        raise CliError(
            "--out: expected the .npy file to write the labels to (for example --out "
            "labels.npy); pass --no-save instead to solve and print the summary only"
        )
    if args.out is not None and args.no_save:
        raise CliError("--no-save: the labels cannot go to --out and nowhere; pass one of them")
    out = _out_path(args.out, (args.scores, args.marginals))
    scores = _load_scores(args.scores)
    marginals = _load_marginals(args.marginals)
    if isinstance(marginals, Counts) and scores.ndim >= 2:
        total, n_rows = int(np.sum(marginals.sizes)), scores.shape[-2]
        if total != n_rows:
            raise CliError(
                f"--marginals: whole-number values are read as label sizes, which must sum "
                f"to N={n_rows} (these sum to {total}); for proportions, save values that "
                "sum to 1"
            )
    result = _solve_and_report(scores, args, marginals)
    if out is None:
        print("labels not saved (--no-save)")
    else:
        _save_labels(out, _to_host(result.labels))
        print(f"labels written to {out}")
    return 0


def demo_scores(n_rows: int, n_labels: int, seed: int = 0) -> np.ndarray:
    """A SeLa-shaped problem: logits of a half-trained network with planted clusters.

    Each point belongs to a planted cluster; the network puts a margin of 2 (in logit
    units) on it, on top of unit Gaussian noise, in float32.
    """
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n_rows, n_labels), dtype=np.float32)
    planted = rng.integers(0, n_labels, size=n_rows)
    logits[np.arange(n_rows), planted] += np.float32(2.0)
    return logits


def _cmd_demo(args: argparse.Namespace) -> int:
    for option, value, least in (("--n", args.n, 1), ("--k", args.k, 1), ("--seed", args.seed, 0)):
        if value < least:
            raise CliError(f"{option}: expected an integer >= {least}, got {value}")
    _check_solver_options(args)
    print(f"equipart {__version__}: SeLa-shaped demo, N={args.n} points, K={args.k} labels")
    scores = demo_scores(args.n, args.k, args.seed)
    print(f"scores: {scores.nbytes / 2**20:.0f} MiB float32, lam={args.lam}")
    _solve_and_report(scores, args, None)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    from .backends import available

    print(f"equipart {__version__} (Python {sys.version.split()[0]})")
    for name in ("numpy", "scipy", "POT", "numba", "torch", "cupy"):
        try:
            version = md.version(name if name != "cupy" else "cupy")
        except md.PackageNotFoundError:
            version = "not installed"
        print(f"  {name:<6} {version}")
    print(f"backends available: {', '.join(available())}")
    devices = ["cpu"]
    if "torch" in available():
        import torch

        if torch.cuda.is_available():
            devices += [
                f"cuda:{i} {torch.cuda.get_device_name(i)}"
                for i in range(torch.cuda.device_count())
            ]
    print(f"devices: {', '.join(devices)}")
    return 0


def _add_solver_options(parser: argparse.ArgumentParser, scores_kind: bool = True) -> None:
    parser.add_argument("--lam", type=float, default=25.0, help="inverse temperature (25)")
    parser.add_argument("--tol", type=float, default=1e-3, help="max relative mass error")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument(
        "--rounding", default="auto", help="auto (default), argmax, balanced or exact"
    )
    if scores_kind:  # (the demo's generated scores are logits)
        parser.add_argument("--input", default="logits", help="logits, logprobs or probs")
    else:
        parser.set_defaults(input="logits")
    parser.add_argument("--backend", default="auto", help="auto, numpy, numba, torch, cupy")
    parser.add_argument(
        "--acceleration", default="overrelax", help="overrelax (default), anderson or none"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equipart", description="Optimal-transport label assignment (SeLa's step)."
    )
    parser.add_argument("--version", action="version", version=f"equipart {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    solve = commands.add_parser("solve", help="assign labels to the scores in a .npy file")
    solve.add_argument("scores", help="(N, K) or (H, N, K) .npy array of scores")
    solve.add_argument(
        "--out",
        help="write the int64 labels to this .npy file (.npy is appended when the name "
        "lacks it, as np.save does; an existing file is replaced); required unless "
        "--no-save is given",
    )
    solve.add_argument(
        "--no-save", action="store_true", help="solve and print the summary, write no labels"
    )
    solve.add_argument(
        "--marginals", help=".npy of integer label sizes (Counts) or proportions (Prior)"
    )
    _add_solver_options(solve)
    solve.set_defaults(run=_cmd_solve)

    demo = commands.add_parser("demo", help="solve a generated SeLa-shaped problem")
    demo.add_argument("--n", type=int, default=200_000, help="points (200000)")
    demo.add_argument("--k", type=int, default=1000, help="labels (1000)")
    demo.add_argument("--seed", type=int, default=0)
    _add_solver_options(demo, scores_kind=False)
    demo.set_defaults(run=_cmd_demo)

    info = commands.add_parser("info", help="versions, backends and devices")
    info.set_defaults(run=_cmd_info)

    bench = commands.add_parser(
        "bench", help="benchmark solvers (see 'equipart bench --help')", add_help=False
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(run=_cmd_bench)
    return parser


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.runner import main as bench_main

    return bench_main(args.rest)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["bench"]:  # argparse's REMAINDER rejects a leading option (--quick)
        from .bench.runner import main as bench_main

        return bench_main(words[1:])
    args = build_parser().parse_args(words)
    try:
        return args.run(args)
    except (CliError, ValueError, TypeError) as exc:
        print(f"equipart {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
