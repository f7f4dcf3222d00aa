"""``orthocond compare`` on both applications: --tasks, the per-task defaults and the study
preset."""

from __future__ import annotations

import pytest

from orthocond.cli import main, parse_args
from orthocond.cli.parser import config_from_args
from orthocond.train import COMPARE_TASKS, STUDY_TREATMENTS


def test_tasks_option_and_presets():
    args = parse_args(["compare"])
    assert args.tasks == COMPARE_TASKS == ("dbn", "gcp")
    assert parse_args(["compare", "--tasks", "gcp"]).tasks == ("gcp",)
    assert parse_args(["compare", "--preset", "failures"]).tasks == ("dbn",)
    study = parse_args(["compare", "--preset", "study"])
    assert study.tasks == ("dbn", "gcp") and study.seeds == 5
    assert study.treatments.split(",") == list(STUDY_TREATMENTS)
    cfg = config_from_args(study, compare=True)
    assert (cfg.epochs, cfg.batch_size, cfg.limit_train, cfg.milestones) == (2, 32, 1152, (1.5,))
    for bad in ("dbn,dbn", "svd", ""):
        with pytest.raises(SystemExit):
            parse_args(["compare", "--tasks", bad])


def test_compare_both_tasks_prints_both_tables_and_the_paired_study(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--treatments", "vanilla,soc", "--limit-train", "64", "--limit-test",
               "32", "--epochs", "1", "--batch-size", "32", "--monitor-every", "1", "--quiet",
               "--jobs", "1", "--threads", "1", "--no-plots", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "### dbn" in printed and "### gcp" in printed
    assert "| soc |" in printed.split("### gcp")[0]  # SOC is a DBN stem: not run on gcp
    assert "3 runs (1 at a time, 1 thread(s) each)" in printed
    gcp = (out / "gcp" / "compare.json").read_text()
    assert '"width": 8' in gcp  # the per-task default where --width was not given
    assert (out / "study.md").is_file() and (out / "dbn" / "compare.md").is_file()
