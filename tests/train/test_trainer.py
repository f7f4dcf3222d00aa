from __future__ import annotations

import json
import math
import os

import pytest
import torch

import optim
from orthocond.data import load_dataset
from orthocond.train import (
    TrainConfig,
    Trainer,
    aggregate,
    build_model,
    build_optimizer,
    compare,
    evaluate_checkpoint,
    format_table,
    load_checkpoint,
    param_group,
    parse_treatment,
    read_landscape,
    save_checkpoint,
    train,
)
from orthocond.train.schedules import lr_lambda

pytest.importorskip("mlxtend")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny models: thread start-up dominates, and oversubscribed cores make 2 threads crawl.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

TINY = dict(width=4, batch_size=64, monitor_every=2, tensorboard=False, plots=False)


@pytest.fixture(scope="module")
def tiny_data():
    return load_dataset("mnist", limit_train=192, limit_test=64)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "name, expect",
    [
        ("vanilla", (None, "none", None, "none")),
        ("nog", ("svd", "none", None, "none")),
        ("nog-grad", ("svd", "grad", None, "none")),
        ("nog-ns-grad+olr-exact", ("ns", "grad", "exact", "none")),
        ("nog+soc+olr", ("svd", "none", "paper", "soc")),
        ("cayley", (None, "none", None, "cayley")),
        (" hard ", (None, "none", None, "hard")),
        ("bwd-pade", (None, "none", None, "none", "pade")),
        ("vanilla+bwd-svd", (None, "none", None, "none", "svd")),
        ("bwd-svd-unguarded+nog-grad+olr", ("svd", "grad", "paper", "none", "svd-unguarded")),
    ],
)
def test_parse_treatment(name, expect):
    t = parse_treatment(name)
    assert (t.nog, t.nog_scale, t.olr, t.ortho, t.backward)[: len(expect)] == expect
    if len(expect) == 4:
        assert t.backward is None


def test_treatment_backward_reaches_the_config_and_model():
    cfg = TrainConfig(treatment="bwd-svd-unguarded+olr", backward="taylor")
    assert (cfg.backward, cfg.olr) == ("svd-unguarded", "paper")
    assert TrainConfig(treatment="olr", backward="taylor").backward == "taylor"
    # compare's replace() keeps the base's backward for treatments without a bwd part
    base = TrainConfig(backward="pade")
    assert base.replace(treatment="nog").backward == "pade"
    assert base.replace(treatment="bwd-exact").backward == "exact"


@pytest.mark.parametrize("name", ["", "nog+nog-grad", "hard+oni", "vanilla+olr", "sgd", "nog++olr",
                                  "bwd-svd+bwd-exact", "bwd-foo", "vanilla+bwd-svd+olr"])
def test_parse_treatment_rejects(name):
    with pytest.raises(ValueError):
        parse_treatment(name)


def test_config_defaults_follow_the_papers():
    dbn = TrainConfig(epochs=350)
    r = dbn.resolved()
    assert r["lr"] == 0.1 and r["weight_decay"] == 5e-4 and r["method"] == "eig"
    assert [round(m, 9) for m in r["milestones"]] == [100, 200, 300]
    assert dbn.momentum == 0.9 and r["eps"] == 1e-2 and dbn.batch_size == 128 and dbn.gamma == 0.1
    gcp = TrainConfig(task="gcp", epochs=65).resolved("cifar10")
    assert gcp["weight_decay"] == 1e-4 and gcp["method"] == "ns" and gcp["width"] == 64
    assert [round(m, 9) for m in gcp["milestones"]] == [30, 45, 60]
    assert gcp["reduced_channels"] == 256
    assert TrainConfig(treatment="nog-grad+olr").label == "nog-grad+olr"
    assert TrainConfig(nog="svd", olr="paper", ortho="soc").label == "nog+olr+soc"
    with pytest.raises(ValueError, match="geotorch"):
        TrainConfig(olr="paper", ortho="hard")
    cfg = TrainConfig(milestones=[1, 2])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"task": "svd"}, "task"),
        ({"arch": "resnet101"}, "arch"),
        ({"task": "gcp", "ortho": "soc"}, "soc"),
        ({"dataset": "cifar10"}, "data_dir"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -0.1}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"nog": "qr"}, "nog"),
        ({"ortho": "spectral"}, "ortho"),
        ({"milestones": (-1,)}, "milestones"),
        ({"seed": -1}, "seed"),
        ({"schedule": "warmup"}, "schedule"),
        ({"schedule": "normal", "milestones": (2,)}, "milestones apply"),
        ({"schedule": "step", "epochs": 4, "milestones": (1.5,)}, "whole epochs"),
        ({"schedule": "step", "epochs": 4, "milestones": (3, 2)}, "strictly increasing"),
        ({"schedule": "step", "epochs": 4, "milestones": (5,)}, "epochs=4"),
        ({"schedule": "step", "gamma": 2.0}, "gamma"),
        ({"hybrid_switch_epoch": -1}, "hybrid_switch_epoch"),
        ({"hybrid_switch_epoch": "late"}, "hybrid_switch_epoch"),
        ({"hybrid_switch_epoch": "auto", "schedule": "fast"}, "no decay"),
        ({"hybrid_switch_epoch": "auto", "schedule": "multistep", "milestones": (9,)}, "no decay"),
        ({"hybrid_backward": "ns"}, "hybrid_backward"),
        ({"landscape_every": -1}, "landscape_every"),
        ({"landscape_steps": 0}, "landscape_steps"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_hybrid_auto_epoch_is_the_last_decay():
    def auto(**kw):
        return TrainConfig(hybrid_switch_epoch="auto", **kw).hybrid_epoch()

    # multistep: the papers' last milestone (GCP 60 of 65, DBN 300 of 350), floor of a
    # fractional one (gcp over 3 epochs: 60/65*3 = 2.77 -> epoch 2)
    assert auto(task="gcp", epochs=65) == 60 and auto(epochs=350) == 300
    assert auto(task="gcp", epochs=3) == 2
    assert auto(epochs=10, milestones=(2.5, 7.5, 12)) == 7  # 12 lies past the run
    # normal over 10 epochs decays at 3, 6, 9; step defaults to 4, 6 of 8 (ICCV21: 45 of 60)
    assert auto(schedule="normal", epochs=10) == 9 and auto(schedule="normal", epochs=100) == 90
    assert auto(schedule="step", epochs=8) == 6 and auto(schedule="step", epochs=60) == 45
    assert auto(schedule="step", epochs=8, milestones=(3,)) == 3
    assert TrainConfig(hybrid_switch_epoch=4).hybrid_epoch() == 4
    assert TrainConfig().hybrid_epoch() is None


@pytest.mark.parametrize(
    "name, factors",
    [  # the lr factor of epochs 0, 1, 2 of a 3-epoch budget, from the CVPR 2020 formulas
        ("normal", [1.0, 0.1, 0.01]),  # 0.1^floor((e*100/3)/30)
        ("fast", [(1 + 1 / 52) ** 11, (1 - 9 / 52) ** 11, (1 - 19 / 52) ** 11]),  # e*30/3
        ("adjusted", [(1 + 1 / 49) ** 2, (1 - (50 / 3 - 1) / 49) ** 2,
                      (1 - (100 / 3 - 1) / 49) ** 2]),  # e*50/3
        ("step", [1.0, 0.1, 0.01]),  # milestones floor(3/2) = 1, floor(9/4) = 2
    ],
)
def test_epoch_schedules_drive_the_lr_of_every_step(tiny_data, name, factors):
    # 192 images / batch 64 = 3 steps per epoch; the monitor records the lr each step used
    cfg = TrainConfig(epochs=3, schedule=name, lr=0.05, **{**TINY, "monitor_every": 1})
    t = Trainer(cfg, data=tiny_data)
    t.fit()
    lrs = [r["lr"] for r in t.monitor.history]
    expect = [0.05 * f for f in factors for _ in range(3)]
    assert lrs == pytest.approx(expect, rel=1e-6)


def test_per_iteration_schedules_of_the_one_engine():
    # multistep: milestones in (fractional) epochs, decaying at iteration round(m * S)
    f = lr_lambda("multistep", 10, steps_per_epoch=10, milestones=[1.0, 2.0], gamma=0.1)
    assert [f(s) for s in (0, 9, 10, 19, 20, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    f = lr_lambda("multistep", 10, steps_per_epoch=4, milestones=[1.25], gamma=0.5)
    assert [f(s) for s in (4, 5)] == pytest.approx([1.0, 0.5])  # inside an epoch
    c = lr_lambda("cosine", 10, steps_per_epoch=10)  # anneals every iteration
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)
    assert c(1) < 1.0
    assert lr_lambda("constant", 10, steps_per_epoch=1)(5) == 1.0


def test_build_optimizer_groups_and_hooks(tiny_data):
    from orthocond.train import build_model

    cfg = TrainConfig(treatment="nog-grad+olr", **TINY)
    model = build_model(cfg, tiny_data)
    opt, hooks, pre = build_optimizer(cfg, model)
    pre_group, rest_group = param_group(opt, "pre_svd"), param_group(opt, "rest")
    assert [p is model.conv1.weight for p in pre_group["params"]] == [True]
    assert pre == [model.conv1.weight]
    n_rest = sum(1 for p in model.parameters()) - 1
    assert len(rest_group["params"]) == n_rest
    assert isinstance(hooks["nog"], optim.NOG) and hooks["nog"].scale == "grad"
    assert isinstance(hooks["olr"], optim.OLR)
    assert pre_group["weight_decay"] == 5e-4 and pre_group["momentum"] == 0.9
    with pytest.raises(ValueError, match="no param group named 'other'"):
        param_group(opt, "other")

    cfg = TrainConfig(treatment="cayley", **TINY)
    model = build_model(cfg, tiny_data)
    opt, hooks, pre = build_optimizer(cfg, model)
    assert isinstance(opt, optim.CayleySGD) and param_group(opt, "pre_svd")["stiefel"] is True
    assert param_group(opt, "rest")["stiefel"] is False

    cfg = TrainConfig(treatment="hard", **TINY)
    model = build_model(cfg, tiny_data)
    opt, _, pre = build_optimizer(cfg, model)
    assert pre[0] is model.conv1.parametrizations.weight.original


# --------------------------------------------------------------------------- runs


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_matches_uninterrupted_run_bit_for_bit(tiny_data, tmp_path):
    base = TrainConfig(epochs=2, treatment="nog+olr", milestones=(1.5,), **TINY)
    full = Trainer(base, data=tiny_data, out=tmp_path / "full")
    res_full = full.fit()
    assert res_full.epochs_completed == 2 and res_full.steps == 6 and not res_full.failed

    part = Trainer(base.replace(epochs=1), data=tiny_data, out=tmp_path / "part")
    part.fit()
    ckpt = tmp_path / "part" / "checkpoint.pt"
    assert ckpt.is_file() and not [p for p in os.listdir(tmp_path / "part") if p.endswith(".tmp")]
    torch.manual_seed(12345)  # the resume must not depend on the ambient RNG state
    res_resumed = train(base, data=tiny_data, out=tmp_path / "part", resume=True)
    assert res_resumed.epochs_completed == 2 and res_resumed.steps == 6

    resumed = load_checkpoint(ckpt)
    ref = full.model.state_dict()
    assert resumed["model"].keys() == ref.keys()
    for k, v in ref.items():
        assert torch.equal(resumed["model"][k], v), k
    assert resumed["monitor"]["history"] == full.monitor.history
    assert res_resumed.epochs == [dict(e, time_s=r["time_s"]) for e, r in
                                  zip(res_full.epochs, res_resumed.epochs)]
    assert res_resumed.final_acc == res_full.final_acc
    # momentum buffers too
    o_full = full.optimizer.state_dict()["state"]
    o_res = resumed["optimizer"]["state"]
    for k in o_full:
        assert torch.equal(o_full[k]["momentum_buffer"], o_res[k]["momentum_buffer"])
    # the lr schedule went on (x0.1 at epoch 1.5 = step 4): group lr restored after OLR
    assert resumed["optimizer"]["param_groups"][1]["lr"] == pytest.approx(0.01)
    # outputs were rewritten consistently on resume
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == [1, 2]
    assert [x["step"] for x in lines if x["kind"] == "step"] == [0, 2, 4]


def test_resume_with_a_stretched_cvpr_schedule_is_bit_for_bit(tiny_data, tmp_path):
    # "fast" over 2 epochs: epoch 1 reads the formula at e = 1*30/2 = 15. The first part
    # runs with a 1-epoch budget (epoch 0 is the same: e = 0 for any budget); the resume
    # must stretch the schedule onto the 2-epoch budget from its very first step.
    base = TrainConfig(epochs=2, schedule="fast", **{**TINY, "monitor_every": 1})
    full = Trainer(base, data=tiny_data)
    full.fit()
    Trainer(base.replace(epochs=1), data=tiny_data, out=tmp_path).fit()
    res = train(base, data=tiny_data, out=tmp_path, resume=True)
    assert res.steps == 6
    resumed = load_checkpoint(tmp_path / "checkpoint.pt")
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed["model"][k], v), k
    lrs = [r["lr"] for r in resumed["monitor"]["history"]]
    assert lrs == [r["lr"] for r in full.monitor.history]
    assert lrs[3] == pytest.approx(0.1 * (1 - 14 / 52) ** 11, rel=1e-9)


def test_hybrid_switch_happens_once_at_its_epoch(tiny_data, tmp_path):
    logged = []
    cfg = TrainConfig(task="gcp", epochs=3, hybrid_switch_epoch=1, **TINY)
    res = train(cfg, data=tiny_data, out=tmp_path, log=logged.append)
    assert not res.failed
    assert [e["meta_method"] for e in res.epochs] == ["ns", "eig", "eig"]
    assert [e["meta_backward"] for e in res.epochs] == ["exact", "pade", "pade"]
    assert [m for m in logged if "hybrid switch" in m] == [
        "[vanilla] epoch 1: hybrid switch, meta-layers now eig/pade"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["meta_method"]) for r in rows if r["kind"] == "epoch"] == [
        (1, "ns"), (2, "eig"), (3, "eig")]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["hybrid"] == {"switch_epoch": 1, "method": "eig", "backward": "pade",
                               "iters": "keep", "switched": True, "switched_at": 1}
    # a resumed trainer runs the switched method from its first forward
    again = Trainer(cfg.replace(epochs=4), data=tiny_data)
    assert again.model.head.method == "ns"
    again.load_state_dict(state)
    assert (again.model.head.method, again.model.head.backward) == ("eig", "pade")
    # evaluating the checkpoint rebuilds the switched model: the run's own test accuracy
    ev = evaluate_checkpoint(tmp_path, data=tiny_data)
    assert ev["meta_layers"] == {"head": ["eig", "pade", 5]}
    assert ev["clean_accuracy"] == res.final_acc and ev["epoch"] == 3 and ev["num_samples"] == 64
    assert ev["corruptions"] is None


def test_landscape_probe_writes_its_records_and_leaves_training_alone(tiny_data, tmp_path):
    from orthocond.analysis.landscape import LandscapeRecord

    cfg = TrainConfig(epochs=1, landscape_every=2, landscape_steps=3, **{**TINY, "plots": True})
    t = Trainer(cfg, data=tiny_data, out=tmp_path)
    t.fit()
    payload = json.loads((tmp_path / "landscape.json").read_text())
    assert set(payload) == {"label", "seed", "every", "num_steps", "records"}
    assert payload["every"] == 2 and payload["num_steps"] == 3
    recs = payload["records"]
    assert [r["step"] for r in recs] == [0, 2]
    assert set(recs[0]) == set(LandscapeRecord.__dataclass_fields__)
    assert recs[0]["etas"] == pytest.approx([0.1, 37.55, 75.0])
    for r in recs:
        assert len(r["losses"]) == len(r["grad_diffs"]) == 3
        assert r["loss_min"] == min(r["losses"]) and r["grad_diff_max"] == max(r["grad_diffs"])
    # the probe's unperturbed loss is the training step's loss (same batch, same mode)
    train_loss = {h["step"]: h["loss"] for h in t.monitor.history}
    for r in recs:
        assert r["loss"] == pytest.approx(train_loss[r["step"]], rel=1e-5)
    assert (tmp_path / "landscape.png").read_bytes()[:4] == b"\x89PNG"
    assert [x.step for x in read_landscape(tmp_path / "landscape.json")] == [0, 2]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["landscape"]["history"] == recs
    # measuring changes nothing in the training trajectory
    plain = Trainer(cfg.replace(landscape_every=0, plots=False), data=tiny_data)
    plain.fit()
    for k, v in plain.model.state_dict().items():
        assert torch.equal(t.model.state_dict()[k], v), k


def test_resume_errors(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(TrainConfig(**TINY), data=tiny_data, out=tmp_path, resume=True)
    trainer = Trainer(TrainConfig(epochs=1, **TINY), data=tiny_data)
    save_checkpoint(trainer.state_dict(), tmp_path / "c.pt")
    other = Trainer(TrainConfig(epochs=1, treatment="nog", **TINY), data=tiny_data)
    with pytest.raises(ValueError, match="nog"):
        other.resume(tmp_path / "c.pt")
    save_checkpoint(trainer.state_dict(), tmp_path / "r" / "checkpoint.pt")
    with pytest.raises(ValueError, match="lr=None in the checkpoint, 0.05 now"):
        train(TrainConfig(epochs=2, lr=0.05, **TINY), data=tiny_data, out=tmp_path / "r",
              resume=True)
    torch.save({"hello": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an orthocond checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_divergence_is_a_failed_run_not_a_crash(tiny_data):
    res = train(TrainConfig(epochs=1, lr=1e12, divergence_loss=math.inf, **TINY), data=tiny_data)
    assert res.failed and res.reason.startswith("non-finite") and res.final_acc is None
    assert res.summary["nonfinite_loss"] + res.summary["nonfinite_grad"] >= 1
    res2 = train(TrainConfig(epochs=1, lr=1e4, **TINY), data=tiny_data)
    assert res2.failed and "diverged" in res2.reason


def test_evaluation_and_monitor_consistency(tiny_data):
    t = Trainer(TrainConfig(epochs=1, treatment="hard", **TINY), data=tiny_data)
    res = t.fit()
    # test accuracy recomputed directly
    t.model.eval()
    with torch.no_grad():
        x, y = next(iter(tiny_data.test_batches(64)))
        acc = (t.model(x).argmax(1) == y).float().mean().item()
    assert res.final_acc == pytest.approx(acc)
    # hard-orthogonal Pre-SVD layer: orthogonality error at round-off, ||W||_F = sqrt(4)
    assert res.ortho_err < 1e-4 and res.weight_norm == pytest.approx(2.0, rel=1e-4)
    assert res.cond_key == "cond/bn1" and res.cond_steps == [0, 2]
    assert 1 < res.cond_max < 1e3 and res.cond_final <= res.cond_max


def test_compare_counts_failures_and_formats(tiny_data, tmp_path):
    base = TrainConfig(epochs=1, **{**TINY, "plots": True})
    rows, results = compare(base, ["vanilla", "nog"], out=tmp_path, data=tiny_data,
                            log=lambda m: None)
    assert [r["treatment"] for r in rows] == ["vanilla", "nog"]
    assert all(r["failed"] == 0 and r["runs"] == 1 for r in rows)
    assert rows[0]["acc_mean"] == pytest.approx(100 * results[0].final_acc)
    for f in ("compare.md", "compare.json", "condition.png", "accuracy.png"):
        assert (tmp_path / f).is_file(), f
    assert (tmp_path / "condition.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "compare.md").read_text()
    assert md.splitlines()[0].startswith("| treatment | test acc") and "| nog |" in md
    # aggregation over seeds with a failure
    from orthocond.train import RunResult

    fake = [
        RunResult("a", 0, {}, final_acc=0.5, cond_final=10.0, cond_max=100.0, ortho_err=1.0),
        RunResult("a", 1, {}, final_acc=0.7, cond_final=1000.0, cond_max=50.0, ortho_err=3.0),
        RunResult("a", 2, {}, failed=True, reason="diverged", cond_max=1e9),
    ]
    (row,) = aggregate(fake)
    assert row["acc_mean"] == pytest.approx(60.0) and row["acc_std"] == pytest.approx(10.0)
    assert row["cond_final"] == pytest.approx(100.0) and row["cond_max"] == 1e9
    assert row["failed"] == 1 and row["ortho_err"] == pytest.approx(2.0)
    assert "| a | 60.00 ± 10.00 | 100 | 1e+09 | 2 | — | 1/3 |" in format_table([row])
    # runs killed by NaN/Inf are counted apart from divergences
    fake[1] = RunResult("a", 1, {}, failed=True, reason="non-finite grad at step 9")
    (row,) = aggregate(fake)
    assert (row["failed"], row["nonfinite"]) == (2, 1)
    assert format_table([row]).endswith("| 2/3 (1 NaN/Inf) |")


def test_compare_overlays_the_landscape_of_every_run(tiny_data, tmp_path):
    base = TrainConfig(epochs=1, landscape_every=3, landscape_steps=2, **{**TINY, "plots": True})
    compare(base, ["vanilla", "nog"], out=tmp_path, data=tiny_data, log=lambda m: None)
    for run in ("vanilla-s0", "nog-s0"):
        recs = read_landscape(tmp_path / "runs" / run / "landscape.json")
        assert [r.step for r in recs] == [0] and len(recs[0].etas) == 2
        assert not (tmp_path / "runs" / run / "landscape.png").exists()  # one overlay only
    assert (tmp_path / "landscape.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_in_worker_processes_matches_sequential(tiny_data):
    base = TrainConfig(epochs=1, limit_train=192, limit_test=64, **TINY)  # = tiny_data
    _, seq = compare(base, ["vanilla", "olr"], data=tiny_data, log=lambda m: None, threads=1)
    rows, par = compare(base, ["vanilla", "olr"], jobs=2, threads=1, log=lambda m: None,
                        data=None)
    assert [r.label for r in par] == ["vanilla", "olr"] and [r["treatment"] for r in rows] == [
        "vanilla", "olr"]
    for a, b in zip(seq, par):  # same seed, same data, one thread each: same numbers
        assert a.final_acc == b.final_acc and a.cond_values == b.cond_values
    with pytest.raises(ValueError, match="jobs"):
        compare(base, ["vanilla"], jobs=0)


@pytest.mark.cuda
def test_train_on_cuda(tiny_data):
    res = train(TrainConfig(epochs=1, treatment="nog+olr", device="cuda", **TINY), data=tiny_data)
    assert not res.failed and res.final_acc is not None


@pytest.mark.cuda
def test_research_options_on_cuda(tiny_data, tmp_path):
    cfg = TrainConfig(task="gcp", epochs=2, device="cuda", hybrid_switch_epoch=1,
                      landscape_every=3, landscape_steps=2, **TINY)
    res = train(cfg, data=tiny_data, out=tmp_path)
    assert not res.failed and [e["meta_method"] for e in res.epochs] == ["ns", "eig"]
    assert [r.step for r in read_landscape(tmp_path / "landscape.json")] == [0, 3]
    ev = evaluate_checkpoint(tmp_path, corruptions=["gaussian_noise"], severities=[1],
                             data=tiny_data)
    assert ev["clean_accuracy"] == pytest.approx(res.final_acc, abs=1 / 64)
    assert ev == evaluate_checkpoint(tmp_path, corruptions=["gaussian_noise"], severities=[1],
                                     data=tiny_data)


def test_eps_default_depends_on_the_task_and_reaches_the_gcp_head(tiny_data):
    assert TrainConfig().resolved()["eps"] == 1e-2
    assert TrainConfig(task="gcp").resolved()["eps"] == 0.0
    model = build_model(TrainConfig(task="gcp", width=4, eps=0.5), tiny_data)
    assert model.head.eps == 0.5
    model = build_model(TrainConfig(width=4, eps=1e-3), tiny_data)
    assert model.bn1.eps == 1e-3


def test_settings_that_change_nothing_are_listed():
    assert TrainConfig().ineffective_settings() == []
    cfg = TrainConfig(nog_scale="grad", penalty_coef=1.0, schedule="cosine", milestones=(1, 2),
                      task="gcp", groups=2, hybrid_backward="svd", landscape_steps=5)
    text = " | ".join(cfg.ineffective_settings())
    for word in ("nog_scale", "penalty_coef", "milestones", "groups", "hybrid_backward",
                 "landscape_steps"):
        assert word in text
    assert TrainConfig(nog="svd", nog_scale="grad", ortho="srip", penalty_coef=1.0).ineffective_settings() == []
    assert "iters" in TrainConfig(iters=3).ineffective_settings()[0]
    assert TrainConfig(backward="svd").label == "bwd-svd"


def test_resume_with_more_epochs_stretches_the_default_milestones(tiny_data, tmp_path):
    # tiny_data: 192 images, batch 64 -> 3 steps per epoch
    cfg = TrainConfig(epochs=1, **TINY)
    train(cfg, out=tmp_path, data=tiny_data, log=lambda m: None)
    longer = cfg.replace(epochs=4)
    resumed = Trainer(longer, data=tiny_data, out=tmp_path)
    resumed.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt"))
    planned = Trainer(longer, data=tiny_data)
    fn, fresh = resumed.scheduler.lr_lambdas[0], planned.scheduler.lr_lambdas[0]
    assert (fn.milestones, fn.epochs) == (fresh.milestones, fresh.epochs)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * fresh(3))
    # milestones given in epochs stay where they were
    cfg = TrainConfig(epochs=2, milestones=(1,), **TINY)
    out = tmp_path / "explicit"
    train(cfg, out=out, data=tiny_data, log=lambda m: None)
    resumed = Trainer(cfg.replace(epochs=4), data=tiny_data, out=out)
    resumed.load_state_dict(load_checkpoint(out / "checkpoint.pt"))
    assert resumed.scheduler.lr_lambdas[0].milestones == (1.0,)  # epoch 1, not stretched


def test_reported_orthogonality_is_of_the_final_weights(tiny_data):
    from orthocond.ortho import orthogonality_error

    cfg = TrainConfig(epochs=1, ortho="cayley", **{**TINY, "monitor_every": 100})
    trainer = Trainer(cfg, data=tiny_data)
    res = trainer.fit()
    w = trainer.model.conv1.weight.detach()
    assert res.ortho_err == pytest.approx(float(orthogonality_error(w)), abs=1e-9)
    assert res.ortho_err < 1e-4  # Cayley SGD keeps it on the manifold


def test_olr_lr_is_recorded_per_step(tiny_data):
    cfg = TrainConfig(epochs=1, treatment="nog-grad+olr", **{**TINY, "monitor_every": 1})
    trainer = Trainer(cfg, data=tiny_data)
    trainer.fit()
    recs = [r for r in trainer.monitor.history if "olr_lr" in r]
    assert len(recs) == 3
    assert all(0 < r["olr_lr"] <= 0.1 for r in recs)
    assert recs[-1]["olr_lr"] == trainer.hooks["olr"].last_lr[0]


def test_no_weight_decay_on_geotorch_coordinates(tiny_data):
    for kind, decay in (("hard", 0.0), ("none", 5e-4), ("oni", 5e-4)):
        cfg = TrainConfig(ortho=kind, **TINY)
        opt, _, _ = build_optimizer(cfg, build_model(cfg, tiny_data))
        assert param_group(opt, "pre_svd")["weight_decay"] == decay, kind
        assert param_group(opt, "rest")["weight_decay"] == 5e-4


def test_version_1_checkpoints_load_as_the_runs_they_were(tmp_path, tiny_data):
    cfg = TrainConfig(task="gcp", epochs=1, **TINY)
    train(cfg, out=tmp_path, data=tiny_data, log=lambda m: None)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["version"] == 2
    state["version"], state["config"]["eps"] = 1, 0.01  # as version 1 wrote it
    save_checkpoint(state, tmp_path / "v1.pt")
    migrated = load_checkpoint(tmp_path / "v1.pt")
    assert migrated["version"] == 2 and migrated["config"]["eps"] == 0.0
    state["config"]["ortho"] = "oni"
    save_checkpoint(state, tmp_path / "v1oni.pt")
    with pytest.raises(ValueError, match="centering=True"):
        load_checkpoint(tmp_path / "v1oni.pt")
    # resuming compares eps by its meaning: None (the task default) == the default's value
    resumed = train(cfg.replace(eps=0.0, epochs=2), out=tmp_path, data=tiny_data, resume=True,
                    log=lambda m: None)
    assert resumed.epochs_completed == 2
