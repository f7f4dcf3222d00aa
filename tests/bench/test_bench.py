"""Tests of orthocond.bench: the quick CPU run, its JSON, ratios, accuracy and argument checks.

No timed assertions: times are only required to be finite and positive.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time

import numpy as np
import pytest
import torch

from orthocond import bench
from orthocond.bench import run as bench_run
from orthocond.bench import timing as bench_timing
from orthocond.bench.cases import Target
from orthocond.cli import bench as bench_cli

ROW_KEYS = {
    "suite", "case", "shape", "method", "kind", "pass", "median_ms", "min_ms", "iqr_ms",
    "repeat", "ratios", "fwd_err", "grad_err", "peak_mib", "target", "target_text", "met", "note",
}  # fmt: skip
META_KEYS = {"device", "device_type", "torch", "orthocond", "dtype", "tf32", "date", "repeat", "warmup"}
EXPECTED = {
    "gcp": ({"eig-exact", "eig-pade", "ns", "mpa"}, {"eigh", "bmm"}),
    "zca": ({"eig-exact", "eig-pade", "ns", "mpa"}, {"eigh", "bn2d", "bmm"}),
    "nog": ({"svd", "ns"}, {"svd", "bmm", "muon-ns5"}),
    "polar": (
        {"ns-5", "ns-6", "ns-7", "ns-8", "ns-9", "ns-6-f32gram", "ns-8-f32gram", "full-8", "full-9"},
        {"svd", "muon-ns5"},
    ),
    "step": ({"nog-svd+olr", "nog-ns+olr"}, {"sgd"}),
}


def _reject_constant(name: str) -> float:
    raise AssertionError(f"JSON holds the non-standard constant {name}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny sizes: one intra-op thread avoids thread start-up and contention costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, one_thread):
    """One quick CPU run of every suite through the CLI entry point: (table, JSON dict)."""
    path = tmp_path_factory.mktemp("bench") / "out.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench_cli.main(
            ["--device", "cpu", "--quick", "--repeat", "2", "--warmup", "0", "--json", str(path)]
        )
    assert code == 0
    data = json.loads(path.read_text(), parse_constant=_reject_constant)
    return out.getvalue(), data


def _rows(data, suite=None, method=None, kind=None, pass_=None):
    return [
        r
        for r in data["results"]
        if (suite is None or r["suite"] == suite)
        and (method is None or r["method"] == method)
        and (kind is None or r["kind"] == kind)
        and (pass_ is None or r["pass"] == pass_)
    ]


def test_json_meta(quick_run):
    _, data = quick_run
    meta = data["meta"]
    assert META_KEYS <= set(meta)
    assert meta["device_type"] == "cpu"
    assert meta["torch"] == torch.__version__
    assert meta["dtype"] == "float32"
    assert set(meta["tf32"]) == {"enabled", "matmul", "cudnn_conv"}
    assert meta["tf32"]["enabled"] is False
    assert meta["date"][:4].isdigit() and "T" in meta["date"]
    assert meta["repeat"] == 2 and meta["warmup"] == 0


@pytest.mark.parametrize("suite", sorted(EXPECTED))
def test_every_suite_has_its_methods_and_baselines(quick_run, suite):
    _, data = quick_run
    methods, baselines = EXPECTED[suite]
    assert {r["method"] for r in _rows(data, suite, kind="method")} == methods
    assert {r["method"] for r in _rows(data, suite, kind="baseline")} == baselines
    passes = {r["pass"] for r in _rows(data, suite)}
    assert passes == ({"step"} if suite == "step" else {"fwd"} if suite in ("nog", "polar") else {"fwd", "fwd+bwd"})


def test_rows_have_keys_and_finite_positive_times(quick_run):
    _, data = quick_run
    assert len(data["results"]) == 11 + 13 + 5 + 11 + 3
    for r in data["results"]:
        assert set(r) == ROW_KEYS
        assert r["note"] == "" or r["note"].startswith("model:"), r["note"]
        for key in ("median_ms", "min_ms"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r, key)
        assert r["min_ms"] <= r["median_ms"]
        assert r["iqr_ms"] >= 0
        assert r["repeat"] == 2
        assert r["peak_mib"] is None  # no CUDA allocator statistics on the CPU
        assert r["target"] is None and r["met"] is None  # targets are for the GPU sizes


def test_ratio_equals_time_over_baseline(quick_run):
    _, data = quick_run
    checked = 0
    for r in data["results"]:
        baselines = _rows(data, r["suite"], kind="baseline")
        expected_names = {b["method"] for b in baselines} - ({r["method"]} if r["kind"] == "baseline" else set())
        assert set(r["ratios"]) == expected_names
        for name, ratio in r["ratios"].items():
            same_pass = [b for b in baselines if b["method"] == name and b["pass"] == r["pass"]]
            (base,) = same_pass or [b for b in baselines if b["method"] == name and b["pass"] == "fwd"]
            assert ratio == pytest.approx(r["median_ms"] / base["median_ms"], rel=1e-12)
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("suite", ["gcp", "zca"])
def test_eig_exact_accuracy(quick_run, suite):
    _, data = quick_run
    rows = _rows(data, suite, "eig-exact")
    assert all(r["fwd_err"] < 1e-6 for r in rows)
    (fb,) = [r for r in rows if r["pass"] == "fwd+bwd"]
    assert fb["grad_err"] < 1e-5
    (fwd,) = [r for r in rows if r["pass"] == "fwd"]
    assert fwd["grad_err"] is None  # no gradient in a forward row


def test_accuracy_columns_are_measured(quick_run):
    _, data = quick_run
    # Newton-Schulz (5 iterations) is a coarse root: its error must be visibly nonzero,
    # and the plain float32 eigh baseline lands between the two.
    (ns,) = _rows(data, "gcp", "ns", pass_="fwd+bwd")
    assert 1e-5 < ns["fwd_err"] < 0.5 and ns["grad_err"] > 1e-5
    (eigh,) = _rows(data, "gcp", "eigh", pass_="fwd+bwd")
    assert eigh["fwd_err"] < 1e-4
    # Polar factor: float32 SVD to ~1e-6, Polar Express to its documented 1e-3.
    (svd,) = _rows(data, "nog", "svd", kind="method")
    (ns_polar,) = _rows(data, "nog", "ns", kind="method")
    assert svd["fwd_err"] < 1e-5 and ns_polar["fwd_err"] < 1e-3
    for r in _rows(data, kind="baseline"):
        if r["method"] in ("bmm", "bn2d", "sgd") or (r["suite"] == "nog" and r["method"] == "svd"):
            assert r["fwd_err"] is None and r["grad_err"] is None
    for r in _rows(data, "step"):
        assert r["fwd_err"] is None


def test_markdown_table(quick_run):
    table, data = quick_run
    lines = table.splitlines()
    assert "torch " + torch.__version__ in lines[0] and "dtype float32" in lines[0]
    assert "TF32 off" in lines[0] and data["meta"]["date"] in lines[0]
    body = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| suite")]
    assert len(body) == len(data["results"])
    header = next(ln for ln in lines if ln.startswith("| suite"))
    for col in ("median ms", "x eigh", "x bmm", "x bn2d", "x svd", "x sgd", "fwd err", "grad err", "peak MiB"):
        assert f" {col} |" in header
    assert "target" not in header  # targets only for the GPU sizes


def test_json_to_stdout():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench_cli.main(["--device", "cpu", "--suite", "nog", "--size", "5x7", "--repeat", "1", "--warmup", "0", "--json", "-"])
    data = json.loads(out.getvalue(), parse_constant=_reject_constant)
    assert {r["case"] for r in data["results"]} == {"5x7"}
    assert data["meta"]["suites"] == ["nog"]


def test_user_sizes_float64():
    report = bench.run_bench(
        ["gcp"], device="cpu", dtype="float64", sizes={"gcp": [(1, 3, 2, 2)]}, repeat=1, warmup=0
    )
    assert report.meta["dtype"] == "float64"
    assert {r.shape for r in report.results} == {(1, 3, 2, 2)}
    (r,) = [r for r in report.results if r.method == "eig-exact" and r.pass_ == "fwd+bwd"]
    # float64 against the float64 reference, on a rank-deficient covariance (4 samples, 3
    # channels, rank <= 3 after centring) with a repeated-zero eigenvalue: still tiny, finite.
    assert r.fwd_err < 1e-12 and r.grad_err < 1e-10
    assert "rank-deficient" not in r.note
    rows = bench.run_bench(["gcp"], device="cpu", sizes={"gcp": [(1, 4, 1, 2)]}, repeat=1, warmup=0)
    assert all("rank-deficient" in r.note for r in rows.results)
    assert all(math.isfinite(r.fwd_err) for r in rows.results if r.fwd_err is not None)


def test_timing_statistics_match_numpy():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    t = bench_timing.timing_from_samples(samples)
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    assert t.median_ms == pytest.approx(q50) and t.min_ms == 1.0
    assert t.iqr_ms == pytest.approx(q75 - q25) and t.repeat == 6
    assert bench_timing.timing_from_samples([2.5]) == bench.Timing(2.5, 2.5, 0.0, 1)
    with pytest.raises(ValueError, match="at least one"):
        bench_timing.timing_from_samples([])


def test_benchmark_call_counts_and_budget():
    calls = []
    t = bench.benchmark(lambda: calls.append(1), warmup=2, repeat=7)
    assert len(calls) == 9 and t.repeat == 7 and t.min_ms >= 0

    def slow():
        calls.append(1)
        time.sleep(0.01)

    calls.clear()
    # Warm-up says >= 10 ms a call, so a 30 ms budget allows int(0.03 / 0.01) <= 3 -> the floor 3.
    t = bench.benchmark(slow, warmup=1, repeat=50, max_time_s=0.03)
    assert t.repeat == 3 and len(calls) == 4
    assert t.min_ms >= 10.0  # sleep(0.01) never returns early


def test_target_check():
    t = Target(max_ms=4.0)
    assert t.check(3.9, None, {}) and not t.check(4.1, None, {}) and not t.check(math.nan, None, {})
    e = Target(max_ms=1.0, max_err=1e-3, passes=("fwd",))
    assert e.check(0.5, 5e-4, {}) and not e.check(0.5, 2e-3, {}) and not e.check(0.5, None, {})
    o = Target(max_overhead=0.02, overhead_of="sgd", passes=("step",))
    assert o.check(100.0, None, {"sgd": 1.019}) and not o.check(100.0, None, {"sgd": 1.021})
    assert "<= 4 ms" in t.describe() and "+2 % vs sgd" in o.describe()


def test_fill_ratios_and_met():
    def row(method, kind, pass_, ms, target=None, err=None):
        return bench.Result("gcp", "c", (1,), method, kind, pass_, bench.Timing(ms, ms, 0.0, 1), target=target, fwd_err=err)

    rows = [
        row("ns", "method", "fwd+bwd", 3.0, Target(max_ms=4.0)),
        row("eig-exact", "method", "fwd+bwd", 50.0, Target(max_ms=40.0)),
        row("eigh", "baseline", "fwd", 20.0),
        row("eigh", "baseline", "fwd+bwd", 60.0),
        row("bmm", "baseline", "fwd", 0.5),
    ]
    bench_run._fill_ratios(rows)
    assert rows[0].ratios == {"eigh": pytest.approx(3.0 / 60.0), "bmm": pytest.approx(6.0)}
    assert rows[1].ratios["eigh"] == pytest.approx(50.0 / 60.0)
    assert rows[0].met is True and rows[1].met is False
    assert rows[2].ratios == {"bmm": pytest.approx(40.0)} and rows[2].met is None
    rows[4].ratios.clear()
    assert "x bmm" in bench.Report({"device": "d", "device_type": "cpu", "torch": "t", "orthocond": "o", "dtype": "float32", "tf32": {"enabled": False, "matmul": "ieee", "cudnn_conv": "ieee"}, "date": "2000-01-01T00:00:00+00:00", "repeat": 1, "warmup": 0, "timer": "x"}, rows).to_markdown()


def test_nonfinite_values_become_null():
    r = bench.Result("nog", "c", (2, 2), "svd", "method", "fwd", None, fwd_err=math.inf)
    report = bench.Report({"x": math.nan}, [r])
    data = json.loads(report.to_json(), parse_constant=_reject_constant)
    assert data["meta"]["x"] is None and data["results"][0]["fwd_err"] is None
    assert data["results"][0]["median_ms"] is None


def test_tf32_context_restores():
    before = bench_timing._tf32_state()
    with bench_timing._tf32(True):
        assert bench_timing._tf32_state()["enabled"] is True
        with bench_timing._tf32(False):
            assert bench_timing._tf32_state()["matmul"] == "ieee"
    assert bench_timing._tf32_state() == before


def test_parse_size():
    assert bench.parse_size("gcp:128x256x14x14") == ("gcp", (128, 256, 14, 14))
    assert bench.parse_size("256X2048") == (None, (256, 2048))
    for bad, msg in [("gcp:1x2", "BxCxHxW"), ("foo:2x2", "suite"), ("2xa", "integers"), ("0x4", ">= 1"), ("zca:1x4x1x1", "N\\*H\\*W")]:
        with pytest.raises(ValueError, match=msg):
            bench.parse_size(bad)
    with pytest.raises(TypeError):
        bench.parse_size(5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--suite", "foo"],
        ["--dtype", "float16"],
        ["--repeat", "0"],
        ["--warmup", "-1"],
        ["--max-time", "0"],
        ["--size", "4x4"],  # no suite prefix with --suite all
        ["--suite", "nog", "--size", "4x4x4"],
        ["--suite", "nog", "--size", "gcp:1x2x3x3"],
        ["--size", "gcp:2x2"],
        ["--device", "tpu"],
        ["--step-model", "vgg"],
        ["--unknown"],
    ],
)
def test_bad_cli_arguments_exit(argv, capsys):
    with pytest.raises(SystemExit) as info:
        bench_cli.main(["--device", "cpu", *argv] if "--device" not in argv else argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_gpu_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        bench_cli.main(["--device", "cuda", "--quick"])
    assert "cuda" in capsys.readouterr().err


def test_bad_api_arguments():
    with pytest.raises(ValueError, match="suites"):
        bench.run_bench(["xyz"], device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        bench.run_bench(["nog"], device="cpu", dtype="half")
    with pytest.raises(ValueError, match="not among suites"):
        bench.run_bench(["nog"], device="cpu", sizes={"gcp": [(1, 2, 3, 3)]})
    with pytest.raises(ValueError, match="takes sizes"):
        bench.run_bench(["nog"], device="cpu", sizes={"nog": [(1, 2, 3)]})
    with pytest.raises(ValueError, match="repeat"):
        bench.run_bench(["nog"], device="cpu", repeat=0)
    with pytest.raises(ValueError, match="device"):
        bench.run_bench(["nog"], device="gpu0")
    with pytest.raises(TypeError, match="tf32"):
        bench.run_bench(["nog"], device="cpu", tf32="yes")
    with pytest.raises(ValueError, match="warmup"):
        bench.benchmark(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="max_time_s"):
        bench.benchmark(lambda: None, max_time_s=0)
    with pytest.raises(TypeError, match="callable"):
        bench.benchmark(3)


@pytest.mark.slow
def test_step_resnet50_on_cpu():
    """The GPU default network (gcp_resnet50) through the step suite, at a tiny size."""
    report = bench.run_bench(
        ["step"], device="cpu", sizes={"step": [(2, 32)]}, step_model="resnet50", repeat=1, warmup=0
    )
    assert [r.method for r in report.results] == ["sgd", "nog-svd+olr", "nog-ns+olr"]
    assert all(math.isfinite(r.median_ms) and r.median_ms > 0 for r in report.results)
    assert "gcp_resnet50" in report.results[0].note


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("suite", ["gcp", "zca", "nog", "step"])
def test_quick_cuda(suite):
    report = bench.run_bench([suite], device="cuda", quick=True, step_model="tiny")
    assert report.meta["device_type"] == "cuda" and report.meta["timer"] == "CUDA events"
    for r in report.results:
        assert r.note == "" or r.note.startswith("model:"), r.note
        assert math.isfinite(r.median_ms) and r.median_ms > 0
        assert r.peak_mib is not None and r.peak_mib >= 0
    for r in report.results:
        if r.method == "eig-exact":
            assert r.fwd_err < 1e-6


def test_targets_cover_the_gpu_sizes():
    from orthocond.bench import cases

    for suite, shapes in cases.GPU_SIZES.items():
        methods = EXPECTED[suite][0]
        for shape in shapes:
            targets = cases.TARGETS[(suite, shape)]
            assert targets and set(targets) <= methods
            for target in targets.values():
                assert set(target.passes) <= set(bench.PASSES)


def test_targets_are_applied_to_their_pass():
    from orthocond.bench import cases

    loose = Target(max_ms=1e9, max_err=1.0, passes=("fwd",))
    strict = Target(max_ms=1e9, max_err=0.0, passes=("fwd",))
    case = cases.build_nog((16, 40), torch.device("cpu"), torch.float32, {"svd": strict, "ns": loose})
    rows = {(r.method, r.kind): r for r in bench.run_case(case, torch.device("cpu"), warmup=0, repeat=1)}
    assert rows[("ns", "method")].met is True  # error ~1e-5 <= 1.0
    assert rows[("svd", "method")].met is False  # error ~1e-7 > 0.0
    assert rows[("svd", "baseline")].target is None and rows[("svd", "baseline")].met is None
    report = bench.Report(
        {"device": "d", "device_type": "cpu", "torch": "t", "orthocond": "o", "dtype": "float32",
         "tf32": {"enabled": False, "matmul": "ieee", "cudnn_conv": "ieee"},
         "date": "2000-01-01T00:00:00+00:00", "repeat": 1, "warmup": 0, "timer": "x"},
        list(rows.values()),
    )  # fmt: skip
    table = report.to_markdown()
    assert "| target | met? |" in table and "| yes |" in table and "| NO |" in table
    data = json.loads(report.to_json())
    assert {r["met"] for r in data["results"]} == {True, False, None}


def test_interleaved_timing_gives_every_callable_the_same_rounds():
    from orthocond.bench import benchmark_interleaved

    order: list[str] = []
    fns = [lambda: order.append("a"), lambda: order.append("b"), lambda: order.append("c")]
    timings = benchmark_interleaved(fns, warmup=1, repeat=4)
    assert [t.repeat for t in timings] == [4, 4, 4]
    assert order == ["a", "b", "c"] * 5  # one warm-up round, then 4 timed rounds in order
    # a budget lowers the rounds for all callables alike
    slow = [lambda: time.sleep(0.01), lambda: None]
    timings = benchmark_interleaved(slow, warmup=1, repeat=50, max_time_s=0.05)
    assert timings[0].repeat == timings[1].repeat < 50
    with pytest.raises(TypeError):
        benchmark_interleaved([])


def test_step_suite_is_timed_interleaved():
    from orthocond.bench import run_bench

    report = run_bench(["step"], device="cpu", quick=True, repeat=3, warmup=1, max_time_s=None)
    rows = [r for r in report.results if r.suite == "step"]
    assert {r.method for r in rows} == {"sgd", "nog-svd+olr", "nog-ns+olr"}
    assert len({r.timing.repeat for r in rows}) == 1
    assert all("sgd" in r.ratios for r in rows if r.method != "sgd")


def test_bench_works_when_the_process_chose_the_new_tf32_api():
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision API")
    old = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        report = bench.run_bench(["nog"], device="cpu", quick=True, repeat=2, warmup=1)
        assert report.results and report.meta["tf32"]["matmul"] == "ieee"  # off inside the run
        assert matmul.fp32_precision == "tf32"  # and restored after it
    finally:
        matmul.fp32_precision = old


def test_polar_curve_rows(quick_run):
    """The polar suite is an error-vs-time curve: every schedule has its error against float64."""
    _, data = quick_run
    rows = {r["method"]: r for r in _rows(data, "polar")}
    assert rows["ns-8"]["fwd_err"] < 1e-4 and rows["svd"]["fwd_err"] < 1e-5
    assert rows["ns-5"]["fwd_err"] > rows["ns-8"]["fwd_err"]  # fewer steps, coarser
    assert rows["full-8"]["fwd_err"] < 1e-4  # the same schedule on the full iterate
    assert rows["muon-ns5"]["fwd_err"] > 1e-2  # Muon's quintic is not the polar factor
    assert all(r["ratios"].keys() == {"svd", "muon-ns5"} for r in rows.values() if r["kind"] == "method")
