from __future__ import annotations

import json
import math
import os

import pytest
import torch

import optim
from orthocond.data import load_dataset
from orthocond.training import (
    StepSchedule,
    TrainConfig,
    Trainer,
    aggregate,
    build_optimizer,
    compare,
    format_table,
    load_checkpoint,
    parse_treatment,
    save_checkpoint,
    train,
)

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
    ],
)
def test_parse_treatment(name, expect):
    t = parse_treatment(name)
    assert (t.nog, t.nog_scale, t.olr, t.ortho) == expect


@pytest.mark.parametrize("name", ["", "nog+nog-grad", "hard+oni", "vanilla+olr", "sgd", "nog++olr"])
def test_parse_treatment_rejects(name):
    with pytest.raises(ValueError):
        parse_treatment(name)


def test_config_defaults_follow_the_papers():
    dbn = TrainConfig(epochs=350)
    r = dbn.resolved()
    assert r["lr"] == 0.1 and r["weight_decay"] == 5e-4 and r["method"] == "eig"
    assert [round(m, 9) for m in r["milestones"]] == [100, 200, 300]
    assert dbn.momentum == 0.9 and dbn.eps == 1e-2 and dbn.batch_size == 128 and dbn.gamma == 0.1
    gcp = TrainConfig(task="gcp", epochs=65).resolved("cifar10")
    assert gcp["weight_decay"] == 1e-4 and gcp["method"] == "ns" and gcp["width"] == 64
    assert [round(m, 9) for m in gcp["milestones"]] == [30, 45, 60]
    assert gcp["reduced_channels"] == 256
    assert TrainConfig(treatment="nog-grad+olr").label == "nog-grad+olr"
    assert TrainConfig(nog="svd", olr="paper", ortho="hard").label == "nog+olr+hard"
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
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_step_schedule():
    f = StepSchedule("multistep", 100, [10, 20], 0.1)
    assert [f(s) for s in (0, 9, 10, 19, 20, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    c = StepSchedule("cosine", 100, [], 0.1)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)
    assert StepSchedule("constant", 10, [1], 0.1)(5) == 1.0


def test_build_optimizer_groups_and_hooks(tiny_data):
    from orthocond.training import build_model

    cfg = TrainConfig(treatment="nog-grad+olr", **TINY)
    model = build_model(cfg, tiny_data)
    opt, hooks, pre = build_optimizer(cfg, model)
    assert [p is model.conv1.weight for p in opt.param_groups[0]["params"]] == [True]
    assert pre == [model.conv1.weight]
    n_rest = sum(1 for p in model.parameters()) - 1
    assert len(opt.param_groups[1]["params"]) == n_rest
    assert isinstance(hooks["nog"], optim.NOG) and hooks["nog"].scale == "grad"
    assert isinstance(hooks["olr"], optim.OLR)
    assert opt.param_groups[0]["weight_decay"] == 5e-4 and opt.param_groups[0]["momentum"] == 0.9

    cfg = TrainConfig(treatment="cayley", **TINY)
    model = build_model(cfg, tiny_data)
    opt, hooks, pre = build_optimizer(cfg, model)
    assert isinstance(opt, optim.CayleySGD) and opt.param_groups[0]["stiefel"] is True
    assert opt.param_groups[1]["stiefel"] is False

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
    from orthocond.training import RunResult

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
