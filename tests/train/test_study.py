"""The update-target treatments (grammar, config, optimizer) and the paired multi-seed
study of ``orthocond compare`` on both applications."""

from __future__ import annotations

import json
import math

import pytest
import torch

import optim
from orthocond.data import load_dataset
from orthocond.train import (
    STUDY_TREATMENTS,
    UPDATE_NOG_PARTS,
    RunResult,
    TrainConfig,
    build_model,
    build_optimizer,
    compare_tasks,
    format_study,
    paired_rows,
    param_group,
    parse_treatment,
    runs_for_task,
)
from orthocond.train.study import mean_ci, t_quantile
from orthocond.train.treatments import treatment_label

TINY = dict(width=4, batch_size=64, monitor_every=2, tensorboard=False, plots=False)


@pytest.fixture(scope="module")
def tiny_data():
    return load_dataset("mnist", limit_train=128, limit_test=64)


@pytest.mark.parametrize(
    "name, nog, scale, target, olr, momentum, nesterov",
    [
        ("nog-update", "svd", "grad", "update", None, None, False),
        ("nog-update-ns", "ns", "grad", "update", None, None, False),
        ("nog-spectral", "svd", "spectral", "update", None, None, False),
        ("nog-spectral-ns+olr-update", "ns", "spectral", "update", "update", None, False),
        ("muon", "ns", "spectral", "update", None, 0.95, True),
        ("olr-update", None, "none", "gradient", "update", None, False),
        ("nog+olr", "svd", "none", "gradient", "paper", None, False),
    ],
)
def test_update_treatments_parse_and_label(name, nog, scale, target, olr, momentum, nesterov):
    t = parse_treatment(name)
    assert (t.nog, t.nog_scale, t.nog_target, t.olr) == (nog, scale, target, olr)
    assert (t.pre_svd_momentum, t.pre_svd_nesterov) == (momentum, nesterov)
    cfg = TrainConfig(treatment=name, **TINY)
    assert (cfg.nog, cfg.nog_scale, cfg.nog_target, cfg.olr) == (nog, scale, target, olr)
    # the settings name themselves back (the label of a run built from options)
    label = treatment_label(cfg.nog, cfg.nog_scale, cfg.olr, cfg.ortho, cfg.backward,
                            cfg.nog_target, cfg.pre_svd_momentum, cfg.pre_svd_nesterov)
    assert label == name
    assert cfg.replace(treatment=None).label == name


def test_every_update_part_and_study_treatment_parses():
    for part in UPDATE_NOG_PARTS:
        assert parse_treatment(part).nog_target == "update"
    for name in STUDY_TREATMENTS:
        parse_treatment(name)
    with pytest.raises(ValueError, match="more than one nog part"):
        parse_treatment("muon+nog")
    with pytest.raises(ValueError, match="more than one olr part"):
        parse_treatment("olr+olr-update")
    assert runs_for_task("gcp", ["vanilla", "soc", "nog+soc", "hard"]) == ["vanilla", "hard"]
    assert runs_for_task("dbn", ["soc"]) == ["soc"]


def test_update_settings_validation():
    with pytest.raises(ValueError, match="pre_svd_momentum"):
        TrainConfig(pre_svd_momentum=1.5)
    with pytest.raises(ValueError, match="pre_svd_nesterov needs a positive momentum"):
        TrainConfig(pre_svd_nesterov=True, momentum=0.0)
    with pytest.raises(ValueError, match="Cayley SGD"):
        TrainConfig(ortho="cayley", pre_svd_momentum=0.5)
    assert "nog_target='update' needs NOG (--nog)" in TrainConfig(nog_target="update").ineffective_settings()


def test_build_optimizer_for_muon_and_update_treatments(tiny_data):
    cfg = TrainConfig(treatment="muon+olr-update", **TINY)
    model = build_model(cfg, tiny_data)
    opt, hooks, pre = build_optimizer(cfg, model)
    group, rest = param_group(opt, "pre_svd"), param_group(opt, "rest")
    assert (group["momentum"], group["nesterov"]) == (0.95, True)
    assert (rest["momentum"], rest["nesterov"]) == (0.9, False)  # only the Pre-SVD group
    nog, olr = hooks["nog"], hooks["olr"]
    assert isinstance(nog, optim.NOG) and (nog.target, nog.scale, nog.method) == ("update", "spectral", "ns")
    assert isinstance(olr, optim.OLR) and olr.mode == "update"
    # one step: the Pre-SVD weight moved by alpha* lr sqrt(max(1, m/n)) times a matrix with
    # orthonormal columns (conv1 of width 4 on 1 channel: 4 x 9, wide: factor 1)
    x, y = next(iter(tiny_data.train_batches(16, seed=0)))
    w0 = pre[0].detach().clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    sv = torch.linalg.svdvals((pre[0].detach() - w0).reshape(w0.shape[0], -1).double())
    assert torch.allclose(sv, torch.full_like(sv, olr.last_lr[0]), rtol=2e-3)


def test_mean_ci_and_t_quantile():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 4, 9, 29):
        assert t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3)
    assert t_quantile(100) == 1.96
    m, h = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0 and h == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)
    assert mean_ci([2.0]) == (2.0, None) and mean_ci([]) == (None, None)
    assert mean_ci([1.0, float("nan"), 3.0])[0] == 2.0


def _run(label, seed, acc, cond_max, cond_final=None, failed=False):
    return RunResult(label, seed, {}, failed=failed, final_acc=None if failed else acc,
                     cond_max=cond_max, cond_final=cond_final or cond_max)


def test_paired_rows_pair_by_seed():
    runs = [_run("vanilla", s, 0.90 + 0.01 * s, 1000.0 * (s + 1)) for s in range(5)]
    # ten times smaller kappa at every seed, +1 pp accuracy, one failure
    runs += [_run("t", s, 0.91 + 0.01 * s, 100.0 * (s + 1)) for s in range(4)]
    runs += [_run("t", 4, None, 1e9, failed=True)]
    rows = {r["treatment"]: r for r in paired_rows(runs)}
    v, t = rows["vanilla"], rows["t"]
    assert v["d_acc"] == 0.0 and v["d_log_cond_max"] == 0.0 and v["failed"] == 0
    assert t["runs"] == 5 and t["failed"] == 1 and t["d_failed"] == 1 and t["pairs"] == 5
    assert t["d_acc"] == pytest.approx(1.0) and t["d_acc_ci"] == pytest.approx(0.0, abs=1e-9)
    # the failed seed still has a kappa: 4 pairs at exactly -1, one at log10(1e9 / 5000)
    diffs = [-1.0] * 4 + [math.log10(1e9 / 5000.0)]
    assert t["d_log_cond_max"] == pytest.approx(sum(diffs) / 5)
    text = format_study({"dbn": list(rows.values())})
    assert "### dbn" in text and "| t | 5 |" in text and "1 (+1)" in text


def test_compare_tasks_writes_per_task_tables_and_the_study(tmp_path, tiny_data):
    bases = {task: TrainConfig(task=task, epochs=1, limit_train=128, limit_test=64, **TINY)
             for task in ("dbn", "gcp")}
    done = compare_tasks(bases, ["vanilla", "soc", "nog-update"], seeds=2, out=tmp_path)
    assert [r["treatment"] for r in done["dbn"][0]] == ["vanilla", "soc", "nog-update"]
    assert [r["treatment"] for r in done["gcp"][0]] == ["vanilla", "nog-update"]  # no SOC head
    for task in ("dbn", "gcp"):
        assert (tmp_path / task / "compare.md").is_file()
    study = json.loads((tmp_path / "study.json").read_text())
    assert set(study["tables"]) == {"dbn", "gcp"} and study["seeds"] == 2
    assert [r["pairs"] for r in study["tables"]["gcp"]] == [2, 2]
    assert "κ max ÷ vanilla" in (tmp_path / "study.md").read_text()
