"""User errors of ``sela-train`` and ``sela-eval``: refused up front, one line, exit status 2.

None of these tests trains: every bad setting must be refused before any work, and nothing
may be written to the run folder.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from selflabel.cli import eval_main, train_main
from selflabel.config import Config, ConfigError, check_config, solver_backends
from selflabel.train import CHECKPOINT, METRICS_LOG, Trainer

# A small valid base: the errors below come from the one flag that each case adds.
BASE = ["--dataset", "digits", "--epochs", "1", "--no-progress"]


def _refused(main, argv, capsys) -> str:
    """Run ``main(argv)``; it must exit with status 2 and one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "named", "valid"),
    [
        (["--lam", "-1"], "--lam", "positive"),
        (["--lam", "nan"], "--lam", "finite"),
        (["--heads", "0"], "--heads", ">= 1"),
        (["--clusters", "1"], "--clusters", ">= 2"),
        (["--train-size", "0"], "--train-size", ">= 2"),
        (["--train-size", "1"], "--train-size", "BatchNorm in training mode needs 2+"),
        (["--test-size", "0"], "--test-size", ">= 1"),
        (["--batch-size", "0"], "--batch-size", ">= 2"),
        (["--batch-size", "1"], "--batch-size", "BatchNorm in training mode needs 2+"),
        (["--eval-batch-size", "1"], "--eval-batch-size", "BatchNorm in training mode needs 2+"),
        (["--n-opts", "0"], "--n-opts", ">= 1"),
        (["--solver-tol", "0"], "--solver-tol", "positive"),
        (["--momentum", "1.5"], "--momentum", "[0, 1)"),
        (["--crop-scale", "0.5", "2"], "--crop-scale", "MAX <= 1"),
        (["--solver-backend", "foo"], "--solver-backend", "auto, "),
        (["--device", "tpu"], "--device", "cpu, cuda or cuda:N"),
        (["--dataset", "cifar10"], "--data-dir", "cifar-10-batches-py"),
        (["--dataset", "svhn"], "--data-dir", "train_32x32.mat"),
        (["--data-dir", "/nonexistent/sela"], "--data-dir", "not a folder"),
        (["--dataset", "bogus"], "--dataset", "mnist"),  # argparse's own check, also one line
        (["--epochs", "x"], "--epochs", "invalid int"),
        (["--lr-drops", "0.9", "0.7"], "--lr-drops", "increasing fractions"),
        (["--lr-drops", "1.5"], "--lr-drops", "in (0, 1)"),
        (["--kmeans-init", "0"], "--kmeans-init", ">= 1"),
        (["--knn-pca", "0"], "--knn-pca", ">= 1"),
        (["--head-update", "some"], "--head-update", "round-robin"),
        (["--holdout", "train"], "--holdout", "val"),
        (["--method", "dbscan"], "--method", "untrained"),
    ],
)
def test_bad_flag_is_refused_in_one_line_before_any_work(tmp_path, capsys, flags, named, valid):
    run = tmp_path / "run"
    line = _refused(train_main, ["--out", str(run), *BASE, *flags], capsys)
    assert line.startswith("sela-train: error: ")
    assert named in line and valid in line, line
    assert not run.exists()


def test_solver_backend_names_come_from_equipart():
    from equipart.backends import available

    names = solver_backends()
    assert names[0] == "auto" and set(names[1:]) <= set(available())
    assert "numpy" in names  # always importable


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    line = _refused(train_main, ["--out", str(run), *BASE, "--device", "cuda"], capsys)
    assert line.startswith("sela-train: error: --device: cuda") and "no CUDA device" in line
    assert not run.exists()


def test_missing_data_files_are_one_line_naming_the_file(tmp_path, capsys):
    empty, run = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    argv = ["--out", str(run), *BASE, "--dataset", "cifar10", "--data-dir", str(empty)]
    line = _refused(train_main, argv, capsys)
    assert "data_batch_1" in line and "--data-dir" in line
    argv = ["--out", str(run), "--dataset", "mnist", "--data-dir", str(empty)]
    assert "train-images-idx3-ubyte" in _refused(train_main, argv, capsys)
    assert not run.exists()


def test_errors_found_after_loading_the_data_still_write_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--out", str(run), *BASE, "--method", "kmeans", "--clusters", "5000"]
    line = _refused(train_main, argv, capsys)
    assert line.startswith("sela-train: error: --clusters: k-means needs at least K=5000")
    # --imbalance heavy leaves 1 of 2 images: too few for train-mode BatchNorm.
    argv = ["--out", str(run), *BASE, "--train-size", "2", "--imbalance", "heavy"]
    line = _refused(train_main, argv, capsys)
    assert line.startswith("sela-train: error: --train-size: the training set holds 1 image")
    assert not run.exists()


def test_unreadable_data_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    data, run = tmp_path / "svhn", tmp_path / "run"
    data.mkdir()
    (data / "train_32x32.mat").write_bytes(b"")  # an interrupted download
    (data / "test_32x32.mat").write_bytes(b"")
    argv = ["--out", str(run), *BASE, "--dataset", "svhn", "--data-dir", str(data)]
    line = _refused(train_main, argv, capsys)
    assert line.startswith("sela-train: error: data: ") and "train_32x32.mat" in line
    assert not run.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    line = _refused(train_main, ["--out", str(out), *BASE], capsys)
    assert line.startswith("sela-train: error: --out:")


def _fake_run(folder, cfg: Config) -> bytes:
    """A run folder holding a checkpoint of ``cfg``'s settings and a log; returns the log."""
    folder.mkdir()
    log = b'{"event": "start"}\n'
    torch.save({"config": cfg.to_dict(), "log_bytes": len(log)}, folder / CHECKPOINT)
    (folder / METRICS_LOG).write_bytes(log)
    return log


def test_resume_with_other_settings_is_refused_and_touches_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    saved = Config(dataset="digits", epochs=1, progress=False, lam=25.0)
    log = _fake_run(run, saved)
    before = sorted(p.name for p in run.iterdir())
    argv = ["--out", str(run), *BASE, "--lam", "10", "--resume"]
    line = _refused(train_main, argv, capsys)
    assert line.startswith("sela-train: error: --resume:") and "'lam'" in line
    assert sorted(p.name for p in run.iterdir()) == before
    assert (run / METRICS_LOG).read_bytes() == log


@pytest.mark.parametrize(("log", "found"), [(None, "is missing"), (b"{", "holds 1 bytes")])
def test_resume_without_the_whole_log_is_one_line_and_touches_nothing(tmp_path, capsys, log, found):
    run = tmp_path / "run"
    _fake_run(run, Config(dataset="digits", epochs=1, progress=False))
    if log is None:
        (run / METRICS_LOG).unlink()
    else:
        (run / METRICS_LOG).write_bytes(log)
    line = _refused(train_main, ["--out", str(run), *BASE, "--resume"], capsys)
    assert line.startswith(f"sela-train: error: --resume: {run / METRICS_LOG} {found}")
    assert "cannot be restored" in line
    left = (run / METRICS_LOG).read_bytes() if (run / METRICS_LOG).exists() else None
    assert left == log  # neither created nor padded


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_resume_from_an_unreadable_checkpoint_is_one_line(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    if content is None:  # a torch file, but not a sela-train checkpoint
        torch.save({"weights": 1}, run / CHECKPOINT)
    else:
        (run / CHECKPOINT).write_bytes(content)
    line = _refused(train_main, ["--out", str(run), *BASE, "--resume"], capsys)
    assert line.startswith("sela-train: error: --resume:") and "not a readable" in line


@pytest.mark.parametrize("blob", [b"garbage", {"weights": 1}, {"config": {"dataset": "digits"}}])
def test_eval_of_an_unreadable_checkpoint_is_one_line(tmp_path, capsys, blob):
    path = tmp_path / CHECKPOINT
    if isinstance(blob, bytes):
        path.write_bytes(blob)
    else:
        torch.save(blob, path)
    line = _refused(eval_main, [str(path)], capsys)
    assert line.startswith("sela-eval: error: checkpoint:")
    has_settings = isinstance(blob, dict) and "config" in blob
    assert ("has no model" if has_settings else "not a readable") in line


def test_eval_device_and_data_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    _fake_run(run, Config(dataset="digits", epochs=1, progress=False))
    ckpt = str(run / CHECKPOINT)
    line = _refused(eval_main, [ckpt, "--device", "tpu"], capsys)
    assert line.startswith("sela-eval: error: --device:")
    line = _refused(eval_main, [ckpt, "--data-dir", str(tmp_path / "nowhere")], capsys)
    assert line.startswith("sela-eval: error: --data-dir:")
    line = _refused(eval_main, [str(tmp_path / "missing.pt")], capsys)
    assert line.startswith("sela-eval: error: checkpoint:")


def test_library_users_get_config_errors_before_the_folder_is_made(tmp_path, tiny_config):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="--batch-size"):
        Trainer(dataclasses.replace(tiny_config, batch_size=0), run)
    with pytest.raises(ValueError, match="--solver-backend"):  # ConfigError is a ValueError
        check_config(dataclasses.replace(tiny_config, solver_backend="foo"))
    assert not run.exists()


def test_entry_point_prints_no_traceback(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "selflabel", "train", "--out", str(run), "--lam", "-1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "sela-train: error: --lam: expected a positive number, got -1.0"
    assert not run.exists()
