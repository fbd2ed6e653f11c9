"""What a benchmark run writes: the machine's description, the markdown table, the plots."""

from __future__ import annotations

import os
import platform
import subprocess
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "REFERENCES",
    "TARGETS",
    "describe_machine",
    "headline_table",
    "markdown_table",
    "plot_results",
    "time_to_tol",
]

# The headline's references: the SeLa reference loop stopped at the common tolerance (time
# to tol, like every other time here) and POT's ot.sinkhorn.
REFERENCES = (("SeLa loop", "sela-ref-tol"), ("ot.sinkhorn", "pot-sinkhorn"))
# Speed-up targets (reference time / equipart time) by problem size, and the families
# they apply to (None: every family).
TARGETS: dict[tuple[int, int], tuple[tuple[str, ...] | None, dict[str, float]]] = {
    (10_000, 100): (None, {"sela-ref-tol": 2.0}),
    (50_000, 1_000): (
        ("sela-late", "zipf", "late-training"),
        {"sela-ref-tol": 20.0, "pot-sinkhorn": 40.0},
    ),
    (200_000, 1_000): (
        ("sela-late", "zipf", "late-training"),
        {"sela-ref-tol": 20.0, "pot-sinkhorn": 40.0},
    ),
}
_FAILED = ("skipped", "timeout", "error", "oom", "crashed")

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


def _default_equipart(results: list[dict[str, Any]]) -> str | None:
    """The equipart contender of a run that does not name one: numba, numpy, torch."""
    names = {r["contender"] for r in results if r.get("total_s") is not None}
    for name in ("equipart-numba", "equipart-numpy", "equipart-torch", "equipart-cupy"):
        if name in names:
            return name
    return None


def _versus(job: dict[str, Any] | None, own_s: float, timeout_s: float | None) -> dict:
    """A reference's time to tol against equipart's ``own_s``: the ratio, or a bound.

    A reference that stopped above the tolerance (its iteration cap) or ran out of time
    had not reached it yet: its time is then a lower bound of its time to tol, and so is
    the ratio (bound ">=").
    """
    if job is None:
        return {"status": "not run", "ratio": None}
    entry = {"status": job["status"], "time_s": job.get("total_s"), "sweeps": job.get("n_iter")}
    if job["status"] == "timeout":
        entry["time_s"] = job.get("timeout_s", timeout_s)
    time_s = entry["time_s"]
    if time_s is None or job["status"] in ("skipped", "error", "oom", "crashed"):
        return {**entry, "ratio": None, "note": job.get("note", "")}
    return {**entry, "ratio": time_s / own_s, "bound": "=" if job["status"] == "ok" else ">="}


def time_to_tol(
    results: list[dict[str, Any]],
    equipart: str | None = None,
    timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """The headline: equipart's time to tol per problem and lam, with every reference's
    time and sweeps beside it and the ratio reference / equipart (see ``_versus``).

    ``equipart`` is the contender of the default backend (when None, or not among the
    results: the first of numba, numpy, torch, cupy that ran); a reference that timed
    out stands at its job's timeout (its record's ``timeout_s``, else ``timeout_s``).
    """
    if equipart is None or not any(r["contender"] == equipart for r in results):
        equipart = _default_equipart(results)
    jobs = {(r["contender"], r["family"], r["n"], r["k"], r.get("lam")): r for r in results}
    rows = []
    for r in results:
        if r["contender"] != equipart:
            continue
        problem = (r["family"], r["n"], r["k"], r.get("lam"))
        row: dict[str, Any] = {
            "family": r["family"],
            "n": r["n"],
            "k": r["k"],
            "lam": r.get("lam"),
            "contender": equipart,
            "status": r["status"],
            "time_s": r.get("total_s"),
            "sweeps": r.get("n_iter"),
            "start_sweeps": r.get("start_sweeps", 0.0),
            "versus": {},
        }
        for _, name in REFERENCES:
            job = jobs.get((name, *problem))
            if r["status"] != "ok":
                row["versus"][name] = {"status": "equipart did not reach tol", "ratio": None}
            else:
                row["versus"][name] = _versus(job, r["total_s"], timeout_s)
        row["targets"] = _targets(row)
        rows.append(row)
    return rows


def _targets(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each applicable speed-up target: met, missed, or open (a lower bound below it)."""
    families, goals = TARGETS.get((row["n"], row["k"]), (None, {}))
    if families is not None and row["family"] not in families:
        return {}
    verdicts = {}
    for name, goal in goals.items():
        versus = row["versus"].get(name, {})
        ratio = versus.get("ratio")
        if ratio is None:
            verdict = "open"
        elif ratio >= goal:
            verdict = "met"
        else:
            verdict = "missed" if versus.get("bound") == "=" else "open"
        verdicts[name] = {"goal": goal, "verdict": verdict}
    return verdicts


def _ratio_text(versus: dict[str, Any]) -> str:
    ratio = versus.get("ratio")
    if ratio is None:
        return versus.get("status", "-").split(":")[0]
    return ("≥ " if versus.get("bound") == ">=" else "") + f"{ratio:.3g}x"


def _sweeps_text(n_iter: int | None, start_sweeps: float | None) -> str:
    """Sweeps of the whole scores, a sampled start's work added as "+ x" (in sweeps)."""
    text = _fmt(n_iter, "d")
    return f"{text} + {start_sweeps:.1f}" if start_sweeps else text


def headline_table(rows: list[dict[str, Any]], tol: float | None = None) -> str:
    """Time to tol per problem: equipart, each reference, their ratios and sweeps."""
    names = " | ".join(f"{label} s | sweeps | {label} / equipart" for label, _ in REFERENCES)
    what = f"time to tol {tol:g}" if tol is not None else "time to tol"
    lines = [
        f"| problem | lam | equipart {what} s | sweeps | {names} | targets |",
        "|" + "---|" * (5 + 3 * len(REFERENCES)),
    ]
    for row in rows:
        cells = [
            f"{row['family']} {row['n']:,}x{row['k']:,}",
            _fmt(row["lam"], "g"),
            _fmt(row["time_s"], ".3g") if row["status"] == "ok" else _status_text(row),
            _sweeps_text(row["sweeps"], row.get("start_sweeps")),
        ]
        for _, name in REFERENCES:
            versus = row["versus"][name]
            late = versus.get("bound") == ">="
            cells += [
                ("> " if late else "") + _fmt(versus.get("time_s"), ".3g"),
                _fmt(versus.get("sweeps"), "d"),
                _ratio_text(versus),
            ]
        goals = [
            f"{name} {t['goal']:g}x: {t['verdict']}" for name, t in row["targets"].items()
        ]
        cells.append("; ".join(goals) or "-")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per job: problem, contender, status and the measures (see docs)."""
    header = (
        "| problem | lam | contender | status | time to tol s | sweeps | ms/sweep | peak MB "
        "| +MB | error | size spread | objective | gap to LP |"
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
        if r["status"] in _FAILED:
            status += f": {r.get('note', '')}"[:90]
        lines.append(
            "| "
            + " | ".join(
                [
                    problem,
                    _fmt(r.get("lam"), "g"),
                    r["contender"],
                    status.replace("|", "/"),
                    _fmt(r.get("total_s"), ".3g"),
                    _sweeps_text(r.get("n_iter"), r.get("start_sweeps")),
                    _fmt(r.get("ms_per_iter"), ".3g"),
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


def plot_results(
    results: list[dict[str, Any]],
    stem: Path,
    title: str,
    headline: list[dict[str, Any]] | None = None,
) -> list[Path]:
    """The speed-ups of the headline (``time_to_tol`` rows), time to tol and memory
    against N (per K) and iterations against lam; returns the PNGs written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for suffix in ("speedup", "time", "memory", "lam"):  # no stale plot of an earlier run
        stem.with_name(f"{stem.name}_{suffix}.png").unlink(missing_ok=True)
    written = []
    if headline:
        path = stem.with_name(f"{stem.name}_speedup.png")
        if _plot_speedups(plt, headline, path, title):
            written.append(path)
    ran = [r for r in results if r.get("total_s") is not None]
    # time and memory against N: one panel per K, one line per contender, failures as x
    by_k: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in ran:
        by_k[r["k"]].append(r)
    if by_k:
        for metric, label, suffix in (
            ("total_s", "time to tol (s)", "time"),
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


def _plot_speedups(plt: Any, rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Bars of reference time / equipart time per problem (log scale), one colour per
    reference; hatched bars are lower bounds (the reference had not reached tol), a
    black tick marks a target. False (nothing written) when no ratio is known."""
    import numpy as np

    shown = [r for r in rows if any(v.get("ratio") for v in r["versus"].values())]
    if not shown:
        return False
    height = 0.8 / len(REFERENCES)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) * len(REFERENCES) + 1.5))
    y = np.arange(len(shown))
    for index, (label, name) in enumerate(REFERENCES):
        at = y + (index - (len(REFERENCES) - 1) / 2) * height
        ratios = [r["versus"][name].get("ratio") or np.nan for r in shown]
        bars = ax.barh(at, ratios, height=height, label=f"{label} / equipart")
        for bar, row, ratio in zip(bars, shown, ratios, strict=True):
            versus = row["versus"][name]
            if versus.get("bound") == ">=":
                bar.set_hatch("//")
            if ratio == ratio:
                text = ("≥" if versus.get("bound") == ">=" else "") + f"{ratio:.3g}x"
                ax.text(ratio, bar.get_y() + height / 2, " " + text, va="center", fontsize=7)
            goal = row["targets"].get(name, {}).get("goal")
            if goal:
                ax.plot([goal, goal], [bar.get_y(), bar.get_y() + height], "k-", lw=2)
    ax.set_yticks(y, [f"{r['family']} {r['n']:,}x{r['k']:,} lam {r['lam']:g}" for r in shown])
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", lw=1)
    ax.set(xscale="log", xlabel="time to tol: reference / equipart (hatched: lower bound)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{title}\nspeed-up of equipart ({shown[0]['contender']}); | = target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
