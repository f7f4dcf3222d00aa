from __future__ import annotations

import json
import subprocess
import sys
import types

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


def test_help_lists_the_three_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "compare", "bench"):
        assert cmd in out
    help_train = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--task", "--nog", "--nog-scale", "--olr", "--ortho", "--method", "--backward",
                 "--device", "--seed", "--out", "--resume", "--schedule"):
        assert flag in help_train


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
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["train", "--ortho", "spectral"])


def test_compare_two_treatments_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--treatments", "vanilla,nog-grad+olr", *SMALL, "--jobs", "1", "--threads", "1",
               "--out", str(out)])
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


def test_bench_forwards_its_arguments(monkeypatch):
    seen = {}

    def fake_main(argv=None):
        seen["argv"] = argv
        return 3

    monkeypatch.setattr(orthocond, "bench", types.SimpleNamespace(main=fake_main), raising=False)
    monkeypatch.setitem(sys.modules, "orthocond.bench", orthocond.bench)
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

    from orthocond.cli import _config

    path = Path(__file__).resolve().parents[1] / "examples" / script
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
