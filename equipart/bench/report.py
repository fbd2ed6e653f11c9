"""What a benchmark run writes: the machine's description, the markdown table, the plots."""

from __future__ import annotations

import os
import platform
import subprocess
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "markdown_table", "plot_results"]

PACKAGES = (
    "equipart",
    "numpy",
    "scipy",
    "POT",
    "numba",
    "torch",
    "cupy",
    "scikit-learn",
    "k-means-constrained",
    "ott-jax",
    "jax",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"


def _git_commit() -> str | None:
    """The commit of the git checkout holding the running equipart package (None outside
    any repository; an installed copy inside another repository reports that one's)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def describe_machine(with_gpu: bool) -> dict[str, Any]:
    """CPU model, cores, RAM, GPU, OS, Python and the versions of the libraries involved."""
    try:
        import psutil

        physical, ram = psutil.cpu_count(logical=False), psutil.virtual_memory().total
    except ImportError:
        physical, ram = None, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "ram_gib": round(ram / 2**30, 1),
        "gpu": _gpu() if with_gpu else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": _git_commit(),
    }


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _status_text(row: dict[str, Any]) -> str:
    status = row["status"]
    if status == "above-tol" and row.get("converged_claim"):
        return "above tol (claims converged)"
    if status == "above-tol":
        return "not converged"
    return status


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per job: problem, contender, status and the measures (see docs)."""
    header = (
        "| problem | lam | contender | status | iters | ms/iter | time s | peak MB | +MB "
        "| error | size spread | objective | gap to LP |"
    )
    lines = [header, "|" + "---|" * 13]
    exact = {
        (r["family"], r["n"], r["k"]): r["objective"]
        for r in results
        if r["contender"] == "pot-emd" and r["status"] == "ok"
    }
    for r in results:
        problem = f"{r['family']} {r['n']:,}x{r['k']:,}"
        lp = exact.get((r["family"], r["n"], r["k"]))
        gap = lp - r["objective"] if lp is not None and r.get("objective") is not None else None
        status = _status_text(r)
        if r["status"] in ("skipped", "timeout", "error", "oom", "crashed"):
            status += f": {r.get('note', '')}"[:90]
        lines.append(
            "| "
            + " | ".join(
                [
                    problem,
                    _fmt(r.get("lam"), "g"),
                    r["contender"],
                    status.replace("|", "/"),
                    _fmt(r.get("n_iter"), "d"),
                    _fmt(r.get("ms_per_iter"), ".3g"),
                    _fmt(r.get("total_s"), ".3g"),
                    _fmt(r.get("peak_rss_mb"), ".0f"),
                    _fmt(r.get("extra_rss_mb"), ".0f"),
                    _fmt(r.get("error"), ".2e"),
                    _fmt(r.get("label_error"), ".3f"),
                    _fmt(r.get("objective"), ".4f"),
                    _fmt(gap, ".2e"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _ok(row: dict[str, Any]) -> bool:
    return row["status"] == "ok"


def plot_results(results: list[dict[str, Any]], stem: Path, title: str) -> list[Path]:
    """Time and memory against N (per K) and iterations against lam; returns the PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for suffix in ("time", "memory", "lam"):  # a previous run's plot must not stay beside
        stem.with_name(f"{stem.name}_{suffix}.png").unlink(missing_ok=True)
    written = []
    ran = [r for r in results if r.get("total_s") is not None]
    # time and memory against N: one panel per K, one line per contender, failures as x
    by_k: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in ran:
        by_k[r["k"]].append(r)
    if by_k:
        for metric, label, suffix in (
            ("total_s", "wall time to tolerance (s)", "time"),
            ("peak_rss_mb", "peak resident memory (MB)", "memory"),
        ):
            fig, axes = plt.subplots(
                1, len(by_k), figsize=(max(8, 5 * len(by_k)), 4.5), squeeze=False, sharey=True
            )
            for ax, (k, rows) in zip(axes[0], sorted(by_k.items()), strict=True):
                _lines_against(ax, rows, "n", metric)
                ax.set(xscale="log", yscale="log", xlabel="N (points)", title=f"K = {k:,}")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][0].set_ylabel(label)
            fig.suptitle(f"{title}\n{label}: median over families and lam; x = failed", fontsize=10)
            _legend(fig, axes[0])
            path = stem.with_name(f"{stem.name}_{suffix}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    # iterations against lam: one panel per problem run at several lams
    by_problem: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in ran:
        if r.get("n_iter") is not None:
            by_problem[(r["family"], r["n"], r["k"])].append(r)
    swept = {p: rows for p, rows in by_problem.items() if len({r["lam"] for r in rows}) > 1}
    if swept:
        fig, axes = plt.subplots(
            1, len(swept), figsize=(max(8, 5 * len(swept)), 4.5), squeeze=False, sharey=True
        )
        for ax, ((family, n, k), rows) in zip(axes[0], sorted(swept.items()), strict=True):
            _lines_against(ax, rows, "lam", "n_iter")
            ax.set(xlabel="lam", yscale="log", title=f"{family} {n:,}x{k:,}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("iterations (x = did not reach tol)")
        fig.suptitle(f"{title}\niterations against lam", fontsize=10)
        _legend(fig, axes[0])
        path = stem.with_name(f"{stem.name}_lam.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _legend(fig: Any, axes: Any) -> None:
    """One legend for all panels, right of them (contenders absent from a panel too)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(name, handle)
    if entries:
        fig.legend(entries.values(), entries.keys(), loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.82, 1))


def _lines_against(ax: Any, rows: list[dict[str, Any]], x: str, y: str) -> None:
    """Median of ``y`` over the other parameters, against ``x``, per contender."""
    import numpy as np

    by_contender: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get(y) is not None:
            by_contender[r["contender"]].append(r)
    for name, items in sorted(by_contender.items()):
        xs = sorted({r[x] for r in items})
        good = [
            (v, np.median([r[y] for r in items if r[x] == v and _ok(r)] or [np.nan])) for v in xs
        ]
        bad = [(r[x], r[y]) for r in items if not _ok(r)]
        (line,) = ax.plot(
            [v for v, m in good if m == m], [m for _, m in good if m == m], "o-", label=name
        )
        if bad:
            ax.plot(*zip(*bad, strict=True), "x", color=line.get_color(), markersize=8)
