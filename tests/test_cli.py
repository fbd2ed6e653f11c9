"""The ``equipart`` command end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from equipart.cli import main


def test_solve_writes_labels(tmp_path, capsys):
    scores = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    out = tmp_path / "labels.npy"
    assert (
        main(
            [
                "solve",
                str(tmp_path / "s.npy"),
                "--lam",
                "10",
                "--out",
                str(out),
                "--backend",
                "numpy",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "converged=True" in printed and "label sizes" in printed
    labels = np.load(out)
    assert labels.shape == (300,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=6).min() > 0


def test_solve_with_counts_marginals(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.random.default_rng(1).standard_normal((100, 3)))
    np.save(tmp_path / "m.npy", np.array([20, 30, 50]))
    assert (
        main(
            [
                "solve",
                str(tmp_path / "s.npy"),
                "--marginals",
                str(tmp_path / "m.npy"),
                "--backend",
                "numpy",
                "--no-save",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "converged=True" in printed and "labels not saved (--no-save)" in printed


def test_bad_out_folder_is_refused_before_the_solve(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    monkeypatch.setattr("equipart.cli.assign_labels", lambda *a, **k: pytest.fail("solved"))
    status = main(["solve", str(tmp_path / "s.npy"), "--out", str(tmp_path / "no" / "o.npy")])
    assert status == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("folder", [".", "sub/", "sub"])
def test_out_naming_a_folder_is_refused(tmp_path, capsys, monkeypatch, folder):
    """`--out .` used to write a hidden '..npy'; any folder is refused before the solve."""
    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("equipart.cli.assign_labels", lambda *a, **k: pytest.fail("solved"))
    assert main(["solve", "s.npy", "--out", folder]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy", "sub"]


def test_missing_array_library_is_one_line(tmp_path, capsys, monkeypatch):
    """--backend cupy (or torch) without the library: the install hint, exit 2."""
    import builtins

    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy":
            raise ModuleNotFoundError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    assert main(["solve", str(tmp_path / "s.npy"), "--backend", "cupy", "--no-save"]) == 2
    assert "equipart[cupy]" in capsys.readouterr().err


def test_warm_up_rows_do_not_decide_feasibility(tmp_path, capsys):
    """One-hot probabilities sorted by class: the first 256 rows hold only a few labels
    (infeasible on their own), the whole file is feasible and is solved."""
    labels = np.repeat(np.arange(10), 100)
    np.save(tmp_path / "p.npy", np.eye(10)[labels])
    args = ["solve", str(tmp_path / "p.npy"), "--input", "probs", "--rounding", "balanced"]
    assert main([*args, "--out", str(tmp_path / "o.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), labels)


def test_sizes_that_do_not_sum_to_n_say_how_to_give_proportions(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.zeros((40, 4)))
    np.save(tmp_path / "m.npy", np.full(4, 25.0))  # percentages
    args = ["solve", str(tmp_path / "s.npy"), "--marginals", str(tmp_path / "m.npy")]
    assert main([*args, "--no-save"]) == 2
    assert "sum to N=40 (these sum to 100)" in capsys.readouterr().err


def test_out_without_suffix_names_the_written_file(tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.random.default_rng(2).standard_normal((40, 4)))
    assert main(["solve", str(tmp_path / "s.npy"), "--out", str(tmp_path / "labels")]) == 0
    assert f"labels written to {tmp_path / 'labels.npy'}" in capsys.readouterr().out
    assert np.load(tmp_path / "labels.npy").shape == (40,)


def test_whole_number_float_marginals_are_counts(tmp_path, capsys):
    """Sizes saved as floats (np.save of a float array) are counts, not a prior; the
    summary measures the labels against those counts."""
    np.save(tmp_path / "s.npy", np.random.default_rng(3).standard_normal((100, 3)))
    np.save(tmp_path / "m.npy", np.array([20.0, 30.0, 50.0]))
    args = ["solve", str(tmp_path / "s.npy"), "--marginals", str(tmp_path / "m.npy")]
    assert main([*args, "--rounding", "balanced", "--out", str(tmp_path / "o.npy")]) == 0
    assert "0 of 3 outside their target's integer sizes" in capsys.readouterr().out
    np.testing.assert_array_equal(np.bincount(np.load(tmp_path / "o.npy")), [20, 30, 50])


def test_torch_backend_reads_a_npy_file(tmp_path, capsys):
    pytest.importorskip("torch")
    scores = np.random.default_rng(4).standard_normal((60, 3)).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    for backend in ("numpy", "torch"):
        out = tmp_path / f"{backend}.npy"
        args = ["solve", str(tmp_path / "s.npy"), "--backend", backend, "--out", str(out)]
        assert main(args) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "numpy.npy"), np.load(tmp_path / "torch.npy"))


@pytest.mark.parametrize("content", [b"not an array", b"\x93NUMPY\x01\x00garbage", b""])
def test_corrupt_file_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(content)
    assert main(["solve", str(bad), "--no-save"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("equipart solve: error:") and "\n" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("array", [np.float32(1.0), np.zeros(10, np.float32)])
def test_scores_of_fewer_than_two_dimensions_are_one_line(tmp_path, capsys, array):
    """0-d and 1-d files reached the warm-up's row slice first (IndexError traceback)."""
    np.save(tmp_path / "flat.npy", array)
    assert main(["solve", str(tmp_path / "flat.npy"), "--no-save"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("equipart solve: error: scores: expected an (N, K) array")


def test_missing_file_and_bad_scores(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nope.npy"), "--no-save"]) == 2
    assert "not found" in capsys.readouterr().err
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0], [0.0, 1.0]]))
    assert main(["solve", str(tmp_path / "nan.npy"), "--no-save"]) == 2
    assert "NaN" in capsys.readouterr().err


def test_info_and_demo_run_as_console_script():
    info = subprocess.run(
        [sys.executable, "-m", "equipart.cli", "info"], capture_output=True, text=True, check=True
    )
    assert "backends available:" in info.stdout and "numpy" in info.stdout
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "equipart.cli",
            "demo",
            "--n",
            "2000",
            "--k",
            "20",
            "--backend",
            "numpy",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "converged=True" in demo.stdout and "backend: numpy" in demo.stdout
    no_input = subprocess.run(  # the demo's scores are logits: no --input to get wrong
        [sys.executable, "-m", "equipart.cli", "demo", "--input", "probs"],
        capture_output=True,
        text=True,
    )
    assert no_input.returncode == 2 and "unrecognized arguments: --input" in no_input.stderr


def _no_solve(monkeypatch):
    """Fail the test if any solve (warm-up included) or problem generation starts."""
    monkeypatch.setattr("equipart.cli.assign_labels", lambda *a, **k: pytest.fail("solved"))
    monkeypatch.setattr("equipart.cli.demo_scores", lambda *a, **k: pytest.fail("generated"))


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"equipart {command}: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("out", ["s.npy", "s", "link.npy"])
def test_out_naming_the_scores_file_is_refused(tmp_path, capsys, monkeypatch, out):
    """--out s.npy (or s, which np.save turns into s.npy, or a link to it) replaced the
    scores with the labels."""
    scores = np.random.default_rng(5).standard_normal((20, 3)).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    (tmp_path / "link.npy").symlink_to(tmp_path / "s.npy")
    monkeypatch.chdir(tmp_path)
    _no_solve(monkeypatch)
    assert main(["solve", "s.npy", "--out", out]) == 2
    assert "is the input file s.npy" in _one_line_error(capsys, "solve")
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), scores)


def test_out_naming_the_marginals_file_is_refused(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    np.save(tmp_path / "m.npy", np.array([5, 5]))
    _no_solve(monkeypatch)
    marginals = str(tmp_path / "m.npy")
    assert (
        main(["solve", str(tmp_path / "s.npy"), "--marginals", marginals, "--out", marginals]) == 2
    )
    assert "is the input file" in _one_line_error(capsys, "solve")
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), [5, 5])


@pytest.mark.parametrize("existing", [False, True])
def test_unwritable_out_is_refused_before_the_solve(tmp_path, capsys, monkeypatch, existing):
    """An unwritable folder, or an existing file that cannot be written, is refused up
    front (os.access is stubbed: root may write anywhere)."""
    import os

    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    out = tmp_path / "o.npy"
    if existing:
        out.write_bytes(b"old")
    locked = out if existing else tmp_path
    real_access = os.access
    monkeypatch.setattr(
        "equipart.cli.os.access",
        lambda p, mode: False if Path(p) == locked else real_access(p, mode),
    )
    _no_solve(monkeypatch)
    assert main(["solve", str(tmp_path / "s.npy"), "--out", str(out)]) == 2
    assert "not writable" in _one_line_error(capsys, "solve")
    assert (out.read_bytes() == b"old") if existing else not out.exists()


def test_out_write_error_is_one_line(tmp_path, capsys, monkeypatch):
    """An OSError from np.save after the solve (disk full, /proc/...) is one line, exit 2."""
    np.save(tmp_path / "s.npy", np.random.default_rng(6).standard_normal((20, 3)))

    def failing_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", failing_save)
    args = ["solve", str(tmp_path / "s.npy"), "--backend", "numpy"]
    assert main([*args, "--out", str(tmp_path / "o.npy")]) == 2
    assert "cannot write the labels" in _one_line_error(capsys, "solve")
    assert not (tmp_path / "o.npy").exists()


def test_existing_out_file_is_replaced_and_help_says_so(tmp_path, capsys):
    from equipart.cli import build_parser

    np.save(tmp_path / "s.npy", np.random.default_rng(7).standard_normal((20, 3)))
    np.save(tmp_path / "o.npy", np.zeros(3))
    assert main(["solve", str(tmp_path / "s.npy"), "--out", str(tmp_path / "o.npy")]) == 0
    assert np.load(tmp_path / "o.npy").shape == (20,)
    solve = build_parser()._subparsers._group_actions[0].choices["solve"]
    text = " ".join(solve.format_help().split())
    assert ".npy is appended" in text and "existing file is replaced" in text


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--lam", "0", "--lam: expected a finite number > 0"),
        ("--lam", "nan", "--lam: expected a finite number > 0"),
        ("--tol", "-1", "--tol: expected a finite number >= 0"),
        ("--tol", "inf", "--tol: expected a finite number >= 0"),
        ("--max-iter", "0", "--max-iter: expected an integer >= 1"),
        ("--rounding", "bogus", "--rounding: expected one of"),
        ("--input", "bogus", "--input: expected one of"),
        ("--acceleration", "bogus", "--acceleration: expected one of"),
    ],
)
def test_solver_options_are_checked_before_loading(
    tmp_path, capsys, monkeypatch, option, value, message
):
    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    _no_solve(monkeypatch)
    monkeypatch.setattr("equipart.cli._load_scores", lambda *a: pytest.fail("loaded"))
    out = tmp_path / "o.npy"
    assert main(["solve", str(tmp_path / "s.npy"), option, value, "--out", str(out)]) == 2
    assert message in _one_line_error(capsys, "solve")
    assert not out.exists()
    if option != "--input":  # the demo has no --input
        assert main(["demo", option, value]) == 2
        assert message in _one_line_error(capsys, "demo")


@pytest.mark.parametrize(
    "option, value, least",
    [("--n", "0", 1), ("--n", "-5", 1), ("--k", "0", 1), ("--k", "-1", 1), ("--seed", "-1", 0)],
)
def test_demo_sizes_and_seed_are_checked_up_front(capsys, monkeypatch, option, value, least):
    _no_solve(monkeypatch)
    assert main(["demo", option, value]) == 2
    err = _one_line_error(capsys, "demo")
    assert f"{option}: expected an integer >= {least}, got {value}" in err


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--timeout", "-1", "--timeout: expected a finite number > 0"),
        ("--timeout", "0", "--timeout: expected a finite number > 0"),
        ("--timeout", "nan", "--timeout: expected a finite number > 0"),
        ("--max-iter", "0", "--max-iter: expected an integer >= 1"),
        ("--tol", "nan", "--tol: expected a finite number >= 0"),
        ("--tol", "-0.1", "--tol: expected a finite number >= 0"),
        ("--memory-budget-gb", "-1", "--memory-budget-gb: expected a finite number > 0"),
        ("--memory-budget-gb", "0", "--memory-budget-gb: expected a finite number > 0"),
        ("--memory-budget-gb", "nan", "--memory-budget-gb: expected a finite number > 0"),
        ("--cache-gb", "nan", "--cache-gb: expected a finite number > 0"),
        ("--seed", "-1", "--seed: expected an integer >= 0"),
    ],
)
def test_bench_numeric_options_are_checked_up_front(
    tmp_path, capsys, monkeypatch, option, value, message
):
    from equipart.bench import runner

    monkeypatch.setattr(runner, "_generate", lambda *a: pytest.fail("generated"))
    monkeypatch.setattr(runner, "_run_jobs", lambda *a: pytest.fail("ran"))
    out = tmp_path / "results"
    args = ["bench", "--sizes", "40x4", "--contenders", "equipart-numpy", "--no-plots"]
    assert main([*args, "--out", str(out), option, value]) == 2
    assert message in _one_line_error(capsys, "bench")
    assert not out.exists()


def test_bench_timeout_is_used_as_given(tmp_path, monkeypatch):
    """A given --timeout is the one used (0 used to fall back to the default silently)."""
    from equipart.bench import runner

    used = []

    def record(jobs, timeout, progress):
        used.append(timeout)
        return []

    monkeypatch.setattr(runner, "_run_jobs", record)
    args = ["--sizes", "40x4", "--contenders", "equipart-numpy", "--no-plots"]
    assert runner.main([*args, "--out", str(tmp_path), "--timeout", "0.5"]) == 0
    assert used == [0.5]


def test_solve_without_out_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    """The labels went nowhere without a word; now --out (or --no-save) is asked for."""
    np.save(tmp_path / "s.npy", np.zeros((10, 2)))
    _no_solve(monkeypatch)
    monkeypatch.setattr("equipart.cli._load_scores", lambda *a: pytest.fail("loaded"))
    assert main(["solve", str(tmp_path / "s.npy")]) == 2
    err = _one_line_error(capsys, "solve")
    assert "--out: expected the .npy file to write the labels to" in err and "--no-save" in err
    both = ["solve", str(tmp_path / "s.npy"), "--out", str(tmp_path / "o.npy"), "--no-save"]
    assert main(both) == 2
    assert "--no-save: the labels cannot go to --out and nowhere" in _one_line_error(
        capsys, "solve"
    )
    assert not (tmp_path / "o.npy").exists()


def test_solve_rounds_tied_scores_to_their_sizes_by_default(tmp_path, capsys):
    """Constant scores (an untrained network) put every label-0 tie on label 0 under
    argmax; the default rounding ("auto") balances them and says so."""
    np.save(tmp_path / "s.npy", np.zeros((60, 3), np.float32))
    args = ["solve", str(tmp_path / "s.npy"), "--backend", "numpy"]
    assert main([*args, "--out", str(tmp_path / "o.npy")]) == 0
    assert "rounding=balanced" in capsys.readouterr().out
    np.testing.assert_array_equal(np.bincount(np.load(tmp_path / "o.npy")), [20, 20, 20])
    assert main([*args, "--rounding", "argmax", "--no-save"]) == 0
    captured = capsys.readouterr()
    assert "rounding=argmax" in captured.out
    assert "warning: rounding: argmax labels miss their targets" in captured.err


def test_bench_writes_to_a_fresh_folder_by_default(tmp_path, capsys, monkeypatch):
    """Run from the repository, `equipart bench` wrote over benchmarks/results; by default
    it now makes a new folder named for the run's time, and says which."""
    from datetime import datetime

    from equipart.bench import runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "_run_jobs", lambda *a: [])
    args = ["bench", "--sizes", "40x4", "--contenders", "equipart-numpy", "--no-plots"]
    assert main(args) == 0
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("equipart-bench-") and len(folder.name) == 30
    assert f"results go to {folder.name}/" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["bench_custom_cpu.json"]
    when = datetime(2025, 1, 2, 3, 4, 5)
    (tmp_path / "equipart-bench-20250102-030405").mkdir()
    assert runner.fresh_folder(when).name == "equipart-bench-20250102-030405-2"
    assert not (tmp_path / "benchmarks").exists()
