from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import orthocond
from orthocond.cli import build_parser, main

pytest.importorskip("mlxtend")

SMALL = ["--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--width", "4",
         "--batch-size", "64", "--monitor-every", "1", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny models: thread start-up dominates, and oversubscribed cores make 2 threads crawl.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_help_lists_the_four_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "{train,compare,bench,eval}" in out
    for cmd in ("train", "compare", "bench", "eval"):
        assert f"\n    {cmd} " in out, cmd
    choices = build_parser()._subparsers._group_actions[0].choices
    help_train = choices["train"].format_help()
    for flag in ("--task", "--nog", "--nog-scale", "--olr", "--ortho", "--method", "--backward",
                 "--device", "--seed", "--out", "--resume", "--schedule", "--hybrid-switch-epoch",
                 "--hybrid-backward", "--landscape-every"):
        assert flag in help_train
    assert "normal" in help_train and "adjusted" in help_train
    assert "--landscape-every" in choices["compare"].format_help()
    help_eval = choices["eval"].format_help()
    for flag in ("--checkpoint", "--corruptions", "--severities", "--baseline", "--seed", "--out"):
        assert flag in help_eval


def test_research_flags_reach_the_config():
    from orthocond.cli.parser import config_from_args as _config

    args = build_parser().parse_args(
        ["train", "--task", "gcp", "--schedule", "normal", "--epochs", "10",
         "--hybrid-switch-epoch", "auto", "--hybrid-backward", "taylor",
         "--landscape-every", "5", "--landscape-steps", "7"])
    cfg = _config(args, compare=False)
    assert (cfg.schedule, cfg.hybrid_switch_epoch, cfg.hybrid_backward) == ("normal", "auto", "taylor")
    assert cfg.hybrid_epoch() == 9 and (cfg.landscape_every, cfg.landscape_steps) == (5, 7)
    args = build_parser().parse_args(["compare", "--hybrid-switch-epoch", "3"])
    cfg = _config(args, compare=True)
    assert cfg.hybrid_switch_epoch == 3 and cfg.landscape_every == 0
    # the default compare stays as it was: no hybrid switch, no landscape probe
    cfg = _config(build_parser().parse_args(["compare"]), compare=True)
    assert (cfg.hybrid_switch_epoch, cfg.landscape_every, cfg.schedule) == (None, 0, "multistep")
    assert (cfg.epochs, cfg.width, cfg.monitor_every) == (4, None, 2)
    assert cfg.resolved()["width"] == 16


def test_compare_failures_preset_sets_defaults_that_options_override():
    from orthocond.cli import parse_args
    from orthocond.cli.parser import config_from_args as _config
    from orthocond.train import FAILURE_TREATMENTS

    args = parse_args(["compare", "--preset", "failures"])
    cfg = _config(args, compare=True)
    assert (cfg.eps, cfg.lr, cfg.batch_size, cfg.limit_train, cfg.epochs) == (1e-5, 0.1, 32, 2048, 1)
    assert cfg.augment is False and args.seeds == 8 and args.out == str(Path("runs") / "failures")
    assert args.treatments.split(",") == list(FAILURE_TREATMENTS)
    assert "bwd-exact" in FAILURE_TREATMENTS and "bwd-svd-unguarded" in FAILURE_TREATMENTS
    args = parse_args(["compare", "--preset", "failures", "--seeds", "2", "--eps", "1e-3",
                       "--treatments", "bwd-exact"])
    assert (args.seeds, args.eps, args.treatments) == (2, 1e-3, "bwd-exact")
    # without the preset nothing changes
    args = parse_args(["compare"])
    assert (args.seeds, args.eps, args.batch_size, args.out) == (1, None, None, None)
    assert _config(args, compare=True).batch_size == 128  # None: the task's default


def _config_of(argv):
    from orthocond.cli import parse_args
    from orthocond.cli.parser import config_from_args as _config

    return _config(parse_args(argv), compare=argv[0] == "compare")


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "orthocond", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "compare" in r.stdout


def test_train_smoke_writes_everything_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *SMALL, "--nog", "--olr", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "nog+olr" in printed and "test acc" in printed and "cond (kappa)" in printed
    for f in ("metrics.jsonl", "steps.csv", "summary.json", "checkpoint.pt",
              "condition.png", "accuracy.png"):
        assert (out / f).is_file(), f
    assert (out / "condition.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [0, 1] and len(epochs) == 1
    assert steps[0]["cond/bn1"] > 1 and 0 <= epochs[0]["test_acc"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label"] == "nog+olr" and summary["epochs_completed"] == 1
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        assert any((out / "tb").glob("events.out.tfevents.*"))
    # resume to 2 epochs
    rc = main(["train", *SMALL[:4], "--epochs", "2", *SMALL[6:], "--nog", "--olr",
               "--out", str(out), "--resume"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["steps"] == 4
    # a fresh run into a folder with a checkpoint is refused unless asked for
    capsys.readouterr()
    assert main(["train", *SMALL, "--nog", "--olr", "--out", str(out)]) == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert main(["train", *SMALL, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["label"] == "vanilla"
    events = list((out / "tb").glob("events.out.tfevents.*")) if (out / "tb").exists() else []
    assert len(events) <= 1  # the previous run's TensorBoard events are gone


def test_train_user_errors(tmp_path, capsys):
    rc = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
               "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "--download" in err
    assert main(["train", "--dataset", "cifar10", "--quiet", "--out", str(tmp_path)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["train", *SMALL, "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--task", "gcp", "--ortho", "soc", "--quiet"]) == 2
    assert main(["train", "--schedule", "fast", "--hybrid-switch-epoch", "auto", "--quiet"]) == 2
    assert "has no decay" in capsys.readouterr().err
    for bad in (["--hybrid-switch-epoch", "-1"], ["--hybrid-switch-epoch", "soon"],
                ["--hybrid-backward", "ns"], ["--landscape-every", "-2"], ["--schedule", "linear"]):
        with pytest.raises(SystemExit) as e:
            main(["train", *bad])
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["train", "--ortho", "spectral"])
    # options that would change nothing are refused, by name
    capsys.readouterr()
    assert main(["train", "--nog-scale", "grad", "--quiet"]) == 2
    assert "nog_scale='grad' needs NOG" in capsys.readouterr().err
    assert main(["compare", "--treatments", "vanilla,olr", "--penalty-coef", "1", "--quiet"]) == 2
    assert "penalty_coef needs a penalty" in capsys.readouterr().err


def test_train_default_output_folder_names_the_setting():
    from orthocond.train.compare import slug as _slug

    cfg = _config_of(["train", "--task", "gcp", "--backward", "pade", "--method", "eig"])
    assert _slug(f"{cfg.task}-{cfg.arch}-{cfg.dataset}-{cfg.label}-s{cfg.seed}") == (
        "gcp-resnet18-mnist-bwd-pade-s0"
    )


def test_compare_two_treatments_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--treatments", "vanilla,nog-grad+olr", "--tasks", "dbn", *SMALL, "--jobs",
               "1", "--threads", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("| treatment | test acc % (mean ± std) | κ(Σ) final | κ(Σ) max")
    assert lines[2].startswith("| vanilla |") and lines[3].startswith("| nog-grad+olr |")
    assert lines[2].endswith("| 0/1 |")
    for f in ("compare.md", "compare.json", "condition.png", "accuracy.png"):
        assert (out / f).is_file(), f
    data = json.loads((out / "compare.json").read_text())
    assert [r["treatment"] for r in data["rows"]] == ["vanilla", "nog-grad+olr"]
    assert len(data["runs"]) == 2 and data["runs"][1]["config"]["nog_scale"] == "grad"
    assert (out / "runs" / "nog-grad_olr-s0" / "metrics.jsonl").is_file()
    assert "2 runs (1 at a time, 1 thread(s) each)" in printed  # workers: test_training.py
    assert main(["compare", "--treatments", "vanilla,warp", "--quiet", "--out", str(out)]) == 2
    assert "unknown treatment part" in capsys.readouterr().err


def test_eval_checkpoint_clean_corrupted_and_against_a_baseline(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--no-plots", "--no-tensorboard", "--out", str(run)]) == 0
    final_acc = json.loads((run / "summary.json").read_text())["final_acc"]
    capsys.readouterr()
    opts = ["--corruptions", "contrast,gaussian_noise", "--severities", "1,5", "--seed", "0"]
    a, b, c = (tmp_path / f"{k}.json" for k in "abc")
    assert main(["eval", "--checkpoint", str(run), *opts, "--out", str(a)]) == 0
    printed = capsys.readouterr().out
    assert "clean accuracy" in printed and "clean error" in printed and str(a) in printed
    assert "contrast" in printed and "gaussian_noise" in printed and "mCE" not in printed
    ra = json.loads(a.read_text())
    # the same model and test subset as the training run's last evaluation
    assert ra["clean_accuracy"] == final_acc and ra["num_samples"] == 64 and ra["epoch"] == 1
    cor = ra["corruptions"]
    assert cor["severities"] == [1, 5] and list(cor["errors"]) == ["contrast", "gaussian_noise"]
    assert cor["clean_error"] == pytest.approx(1 - ra["clean_accuracy"])
    assert all(len(v) == 2 and all(0 <= e <= 1 for e in v) for v in cor["errors"].values())
    # deterministic given the seed (checkpoint given as a file this time)
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), *opts, "--out", str(b)]) == 0
    assert json.loads(b.read_text()) == ra
    # against itself as the baseline every CE is 100 %
    assert main(["eval", "--checkpoint", str(run), *opts, "--baseline", str(a),
                 "--out", str(c)]) == 0
    assert "mCE 100.0%" in capsys.readouterr().out
    rc_ = json.loads(c.read_text())["corruptions"]
    assert rc_["ce"] == pytest.approx({"contrast": 100.0, "gaussian_noise": 100.0})
    assert rc_["mce"] == pytest.approx(100.0)
    # clean only, default output next to the checkpoint
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text())["corruptions"] is None
    # user errors
    assert main(["eval", "--checkpoint", str(run), "--baseline", str(a)]) == 2
    assert "needs corruptions" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(run), "--corruptions", "contrast",
                 "--severities", "1", "--baseline", str(a)]) == 2
    assert "severities differ" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    for bad in (["--corruptions", "fog"], ["--severities", "0,6"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--checkpoint", str(run), *bad])
        assert e.value.code == 2


def test_bench_forwards_its_arguments(monkeypatch):
    seen = {}

    def fake_main(argv=None):
        seen["argv"] = argv
        return 3

    monkeypatch.setattr(orthocond.cli, "bench_main", fake_main)
    assert main(["bench", "--help", "--device", "cpu"]) == 3
    assert seen["argv"] == ["--help", "--device", "cpu"]


@pytest.mark.parametrize(
    "script", ["eccv22_cifar100_resnet50_dbn.py", "isqrt_imagenet_resnet50_gcp.py"]
)
def test_example_docstring_command_matches_the_script(script):
    """The `orthocond train ...` line in each example's docstring gives the script's config."""
    import importlib.util
    import shlex
    from pathlib import Path

    from orthocond.cli.parser import config_from_args as _config

    path = Path(__file__).resolve().parents[2] / "examples" / script
    spec = importlib.util.spec_from_file_location(script[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = mod.__doc__.replace("\\\n", " ")
    (line,) = [ln.strip() for ln in doc.splitlines() if ln.strip().startswith("orthocond train")]
    cli_argv = shlex.split(line)[1:]
    args = build_parser().parse_args(cli_argv)
    from_cli = _config(args, compare=False).to_dict()
    data_dir = cli_argv[cli_argv.index("--data-dir") + 1]
    (py_line,) = [ln.strip() for ln in doc.splitlines() if ln.strip().startswith("python examples")]
    py_argv = shlex.split(py_line)[2:]
    from_script, _ = mod.config(py_argv)
    from_script = from_script.to_dict()
    assert from_script["data_dir"] == data_dir
    ignore = {"workers", "tensorboard", "plots", "checkpoint", "treatment"}
    diff = {k: (from_cli[k], from_script[k]) for k in from_cli
            if k not in ignore and from_cli[k] != from_script[k]}
    assert diff == {}
