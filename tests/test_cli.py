"""The ``equipart`` command end to end."""

from __future__ import annotations

import subprocess
import sys

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
            ]
        )
        == 0
    )
    assert "converged=True" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"not an array", b"\x93NUMPY\x01\x00garbage", b""])
def test_corrupt_file_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(content)
    assert main(["solve", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("equipart solve: error:") and "\n" not in err
    assert "Traceback" not in err


def test_missing_file_and_bad_scores(tmp_path, capsys):
    assert main(["solve", str(tmp_path / "nope.npy")]) == 2
    assert "not found" in capsys.readouterr().err
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0], [0.0, 1.0]]))
    assert main(["solve", str(tmp_path / "nan.npy")]) == 2
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
    assert "converged=True" in demo.stdout
