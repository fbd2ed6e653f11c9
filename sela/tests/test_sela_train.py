"""End-to-end training: the CPU quick configuration learns, runs resume exactly, CLI works."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from selflabel import evaluate as evaluate_module
from selflabel import labels as labels_module
from selflabel.cli import eval_main, train_main
from selflabel.config import PRESETS, Config, ConfigError
from selflabel.data import FASHION_DIR
from selflabel.features import chunk_sizes
from selflabel.plots import read_log
from selflabel.train import (
    METRICS_LOG,
    SUMMARY,
    SUMMARY_KEYS,
    Trainer,
    heads_at,
    init_model,
    opt_schedule,
    prepare_data,
)


def test_opt_schedule_linear_and_quadratic():
    assert opt_schedule(100, 4) == [0, 25, 50, 75]
    assert opt_schedule(100, 5, "quadratic") == [0, 4, 16, 36, 64]
    with pytest.raises(ValueError, match="opt_schedule"):
        opt_schedule(100, 4, "cosine")
    with pytest.raises(ValueError, match="n_opts"):
        opt_schedule(100, 0)


def test_heads_all_or_round_robin():
    assert heads_at(7, 3, "all") == [0, 1, 2]
    assert [heads_at(i, 3, "round-robin") for i in range(5)] == [[0], [1], [2], [0], [1]]
    with pytest.raises(ValueError, match="head_update"):
        heads_at(0, 3, "random")


def test_paper_preset_is_the_papers_protocol():
    cfg = Config.from_dict(PRESETS["paper"])
    assert (cfg.heads, cfg.clusters, cfg.lam) == (10, 128, 25.0)
    assert cfg.opt_schedule == "linear" and cfg.label_updates == cfg.epochs  # one per epoch
    assert (cfg.lr, cfg.momentum, len(cfg.lr_drops)) == (0.05, 0.9, 2)
    assert min(cfg.lr_drops) >= 0.5  # both drops late in training
    gpu = Config.from_dict(PRESETS["gpu"])
    assert (gpu.dataset, gpu.width, gpu.heads, gpu.clusters, gpu.epochs, gpu.batch_size) == (
        "fashion-mnist", 0.5, 10, 128, 50, 256)  # fmt: skip
    assert gpu.label_updates == 50
    cpu = Config.from_dict(PRESETS["cpu"])
    assert cpu.dataset == "fashion-mnist" and cpu.label_updates >= 30


def test_label_updates_are_linear_one_per_epoch_and_float32_without_autocast(
    tmp_path, tiny_config, monkeypatch
):
    """The protocol: one update per epoch at its first step, scores handed to the solver in
    float32 with autocast off, and every head relabelled (or one in turn)."""
    seen: list[tuple[torch.dtype, tuple[int, ...], bool]] = []
    original = labels_module.sinkhorn_labels

    def spy(scores, *args, **kwargs):
        seen.append((scores.dtype, tuple(scores.shape), torch.is_autocast_enabled("cpu")))
        return original(scores, *args, **kwargs)

    monkeypatch.setattr("selflabel.train.sinkhorn_labels", spy)
    cfg = dataclasses.replace(tiny_config, epochs=3, heads=3, amp=True, evaluate=False)
    trainer = Trainer(cfg, tmp_path / "all")
    trainer.run()
    opts = [r for r in read_log(tmp_path / "all" / METRICS_LOG) if r["event"] == "opt"]
    assert [r["step"] for r in opts] == [0, 8, 16] == trainer.opt_steps  # 8 steps an epoch
    assert [r["heads"] for r in opts] == [[0, 1, 2]] * 3
    assert seen == [(torch.float32, (3, 400, 10), False)] * 3
    assert all(r["scores_dtype"] == "float32" for r in opts)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as around a bf16 training step
        trainer.optimize_labels()
    assert seen[-1] == (torch.float32, (3, 400, 10), False)
    seen.clear()
    cfg = dataclasses.replace(cfg, head_update="round-robin", n_opts=6)
    Trainer(cfg, tmp_path / "rr").run()
    opts = [r for r in read_log(tmp_path / "rr" / METRICS_LOG) if r["event"] == "opt"]
    assert [r["step"] for r in opts] == [0, 4, 8, 12, 16, 20]
    assert [r["heads"] for r in opts] == [[0], [1], [2], [0], [1], [2]]
    assert seen == [(torch.float32, (1, 400, 10), False)] * 6


def test_evaluation_reads_the_papers_layers(tmp_path, tiny_config, monkeypatch):
    """kNN on the FC features after PCA to knn_pca dimensions, the linear probe on the last
    conv block; both baselines (untrained network, raw pixels) in every summary."""
    knn_dims, probe_dims = [], []
    knn, probe = evaluate_module.knn_accuracy, evaluate_module.linear_probe

    def knn_spy(train, *args, **kwargs):
        knn_dims.append(train.shape[1])
        return knn(train, *args, **kwargs)

    def probe_spy(train, *args, **kwargs):
        probe_dims.append(train.shape[1])
        return probe(train, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "knn_accuracy", knn_spy)
    monkeypatch.setattr(evaluate_module, "linear_probe", probe_spy)
    cfg = dataclasses.replace(tiny_config, epochs=1, fc=48, knn_pca=20)
    summary = Trainer(cfg, tmp_path).run()
    data = prepare_data(cfg)
    model = init_model(cfg, data)
    conv_dim = model.conv(torch.zeros(2, *data.train.images.shape[1:])).shape[1]
    pixels = data.train.images[0].numel()
    # trained network, untrained network, then raw pixels
    assert knn_dims == [20, 20, 20] and probe_dims == [conv_dim, conv_dim, pixels]
    assert conv_dim != cfg.fc
    assert list(summary)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert summary["method"] == "sinkhorn" and summary["label_updates"] == 1
    for key in ("knn", "linear", "ami", "ari", "nmi"):
        assert summary[key] == summary["eval"][key]
    assert set(summary["baselines"]) == {"untrained", "pixels"}
    assert json.loads((tmp_path / SUMMARY).read_text()) == json.loads(json.dumps(summary))


def test_untrained_baseline_is_the_initial_network(tmp_path, tiny_config):
    cfg = dataclasses.replace(tiny_config, method="untrained")
    summary = Trainer(cfg, tmp_path / "u").run()
    assert summary["epochs"] == 0 and summary["label_updates"] == 0
    assert not [r for r in read_log(tmp_path / "u" / METRICS_LOG) if r["event"] == "opt"]
    trained = Trainer(dataclasses.replace(cfg, method="sinkhorn", epochs=1), tmp_path / "t").run()
    # the sinkhorn run's untrained baseline is the same network, measured the same way
    for key in ("knn", "linear", "ami"):
        assert trained["baselines"]["untrained"][key] == pytest.approx(summary[key])


def test_curve_points_evaluate_at_even_epochs(tmp_path, tiny_config):
    cfg = dataclasses.replace(tiny_config, epochs=4, curve_points=2, probe_epochs=1)
    Trainer(cfg, tmp_path).run()
    evals = [r["epoch"] for r in read_log(tmp_path / METRICS_LOG) if r["event"] == "eval"]
    assert evals == [2, 4]


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


@pytest.mark.parametrize(("epochs", "drops", "first", "second"), [
    (1, (0.7, 0.9), 6, 8), (3, (0.7, 0.9), 17, 22), (4, (0.5, 0.75), 16, 24), (2, (), 99, 99),
])  # fmt: skip
def test_lr_drops_at_fractions_of_training_by_step(
    tmp_path, tiny_config, monkeypatch, epochs, drops, first, second
):
    """8 steps per epoch (400 images, batches of 50); a drop at the first step at or after
    each fraction of all steps, mid-epoch if need be (a one-epoch run drops too)."""
    cfg = dataclasses.replace(tiny_config, epochs=epochs, lr_drops=drops, n_opts=1, evaluate=False)
    used: list[float] = []
    monkeypatch.setattr(
        Trainer, "train_step", lambda self, idx: used.append(self.optimizer.param_groups[0]["lr"])
    )
    Trainer(cfg, tmp_path).run()
    lr, gamma = cfg.lr, cfg.lr_gamma
    expected = [lr * gamma ** ((step >= first) + (step >= second)) for step in range(8 * epochs)]
    assert used == pytest.approx(expected)
    epochs_logged = [r for r in read_log(tmp_path / METRICS_LOG) if r["event"] == "epoch"]
    assert epochs_logged[-1]["lr"] == pytest.approx(used[-1])  # the epoch's last step's


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_quick_preset_runs_the_protocol_and_its_labels_learn(tmp_path):
    """CI's quick run of the paper's protocol on Fashion-MNIST: one linear update per epoch,
    float32 label passes, the curves evaluated, and pseudo-labels that track the classes
    better than the first update's (a learning check, not a comparison of methods)."""
    cfg = Config.from_dict({**PRESETS["quick"], "progress": False})
    summary = Trainer(cfg, tmp_path).run()
    log = read_log(tmp_path / METRICS_LOG)
    opts = [r for r in log if r["event"] == "opt"]
    steps = log[0]["steps_per_epoch"]
    assert [r["step"] for r in opts] == [steps * e for e in range(cfg.epochs)]
    assert all(r["scores_dtype"] == "float32" and r["solver_converged"] for r in opts)
    assert [r["epoch"] for r in log if r["event"] == "eval"] == [cfg.epochs // 2, cfg.epochs]
    assert opts[-1]["nmi"] > opts[0]["nmi"] + 0.1, (opts[0]["nmi"], opts[-1]["nmi"])
    assert summary["knn"] > 0.5 and summary["linear"] > 0.5  # chance is 0.1
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
    cfg = dataclasses.replace(tiny_config, method="kmeans", imbalance="heavy", epochs=1)
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
    saved = json.loads((out / SUMMARY).read_text())
    assert saved["config"]["lam"] == 10.0 and saved["config"]["label_augment"] is False
    capsys.readouterr()
    assert eval_main([str(out / "checkpoint.pt"), "--output", str(tmp_path / "e.json")]) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    assert again["pseudo"] == pytest.approx(saved["eval"]["pseudo"])
    assert again["knn"] == pytest.approx(saved["knn"])


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "selflabel"], capture_output=True, text=True)
    assert done.returncode == 2 and "train" in done.stderr
