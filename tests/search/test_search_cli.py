import csv
import dataclasses
import json
from pathlib import Path

import pytest
from cache_profiles import calibrated

from merino_edge.arch import Axes, load_arch
from merino_edge.cli import main
from merino_edge.search.budgets import Budget
from merino_edge.search.entropy import EntropyTable
from merino_edge.search.space import SearchSpace

PROFILE = Path(__file__).parent / "data" / "search_profile.json"
SMALL = ["--widths", "64,128,256", "--ratios", "1,2", "--depths", "1,2", "--blocks", "3", "--iterations", "2000", "--population", "64", "--parents", "8"]


def run(capsys, *argv):
    try:
        code = main(["search", *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_search_writes_arch_json_with_the_search_record(tmp_path, capsys):
    out_path = tmp_path / "arch.json"
    code, out, err = run(capsys, *SMALL, "--flops", "55G", "--params", "27M", "--seed", "1", "--out", str(out_path))
    assert code == 0, err
    arch = load_arch(out_path)
    assert arch.flops().total <= 55e9 and arch.params() <= 27e6
    record = json.loads(out_path.read_text())["search"]
    assert record["budget"]["flops"] == 55_000_000_000 and record["budget"]["params"] == 27_000_000
    assert record["seed"] == 1 and record["axes"]["widths"] == [64, 128, 256]
    assert record["objective"]["alpha"] == [0.6, 0.4] and record["objective"]["beta"] == 0.0625 and record["objective"]["eps"] == 0.001
    assert record["costs"]["flops"] == arch.flops().total
    assert len(record["terms"]) == 3
    assert record["ea_percent_of_exact"] == pytest.approx(100.0)
    for word in ("E", "H_MHA", "g_FFN", "LM head", "EA reaches", arch.short()):
        assert word in out


def test_both_flops_conventions_are_recorded_and_read_back(tmp_path, capsys):
    for convention in ("full", "paper"):
        out_path = tmp_path / f"{convention}.json"
        code, out, err = run(capsys, *SMALL, "--flops", "60G", "--flops-convention", convention, "--out", str(out_path))
        assert code == 0, err
        arch = load_arch(out_path)
        record = json.loads(out_path.read_text())["search"]
        budget = Budget.from_json(record["budget"])
        assert budget.flops_convention == record["costs"]["flops_convention"] == convention
        assert record["costs"]["flops_full"] == arch.flops().total
        assert record["costs"]["flops_paper"] == (arch.flops().total - arch.flops().head) // 2
        assert record["costs"]["flops"] == record["costs"][f"flops_{convention}"] <= 60e9
        assert f"FLOPs <= 60G ({convention}:" in out and "paper: " in out


def test_the_paper_preset_is_the_papers_search_and_flags_override_it(tmp_path, capsys):
    out_path = tmp_path / "arch.json"
    code, out, err = run(capsys, "--preset", "paper", "--flops", "110G", "--out", str(out_path))
    assert code == 0, err
    arch = load_arch(out_path)
    record = json.loads(out_path.read_text())["search"]
    assert (arch.vocab_size, arch.proj_dim, arch.max_positions, len(arch.blocks)) == (50272, 768, 2048, 4)
    assert record["budget"]["flops_convention"] == "paper" and record["costs"]["flops_paper"] <= 110e9
    assert record["evolution"]["mutations"] == 100_000
    assert arch.params() == pytest.approx(61e6, rel=0.01)  # Table 2's MeRino-61M at 110G
    code, out, err = run(capsys, "--vocab-size", "1024", "--preset", "paper", *SMALL[:6], "--flops-convention", "full", "--flops", "6G", "--out", str(out_path))
    assert code == 0, err
    arch = load_arch(out_path)
    assert arch.vocab_size == 1024 and arch.proj_dim == 768 and len(arch.blocks) == 4
    assert json.loads(out_path.read_text())["search"]["budget"]["flops_convention"] == "full"


def test_latency_budget_with_a_profile(tmp_path, capsys):
    out_path = tmp_path / "arch.json"
    code, out, err = run(capsys, *SMALL, "--latency-ms", "25.9ms", "--profile", str(PROFILE), "--latency-context", "512", "--out", str(out_path))
    assert code == 0, err
    record = json.loads(out_path.read_text())["search"]
    assert record["costs"]["decode_latency_ms"] <= 25.9
    assert record["profile"] == str(PROFILE)
    assert "predicted decode latency" in out


def test_a_calibrated_profile_searches_below_the_budget_by_its_fit_error(tmp_path, capsys):
    """The chosen arch is predicted under the budget less the calibration's decode MAPE (default), or less --latency-margin."""
    space = SearchSpace(Axes(widths=(64, 128, 256), ratios=(1.0, 2.0), depths=(1, 2)), blocks=3)
    profile = calibrated(json.loads(PROFILE.read_text()), space, context=512)
    profile = dataclasses.replace(profile, calibration=dataclasses.replace(profile.calibration, decode_mape=6.0))
    path = profile.save(tmp_path / "calibrated.json")
    for extra, margin in (([], 0.06), (["--latency-margin", "2%"], 0.02), (["--latency-margin", "0"], 0.0)):
        out_path = tmp_path / "arch.json"
        code, out, err = run(capsys, *SMALL, "--latency-ms", "40ms", "--profile", str(path), *extra, "--out", str(out_path))
        assert code == 0, err
        record = json.loads(out_path.read_text())["search"]
        assert record["budget"]["latency_margin"] == margin
        assert record["costs"]["decode_latency_ms"] <= 40 * (1 - margin)
        assert record["costs"]["decode_latency_ms"] > 40 * (1 - margin) * 0.9  # the budget binds
        assert ("below it" in out) == (margin > 0)


def test_pareto_sweep_writes_csv_and_png(tmp_path, capsys):
    code, out, err = run(capsys, *SMALL, "--flops", "55G", "--pareto", "flops=50G:64G:4", "--pareto-out", str(tmp_path / "p"), "--out", str(tmp_path / "a.json"))
    assert code == 0, err
    with (tmp_path / "p" / "pareto.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["budget"]) for r in rows] == [50_000_000_000, 54_666_666_667, 59_333_333_333, 64_000_000_000]
    assert rows[0]["objective"] == ""  # 50G: nothing fits (the LM head alone is 50.3G)
    values = [float(r["objective"]) for r in rows[1:]]
    assert values == sorted(values) and all(float(r["flops"]) <= float(r["budget"]) for r in rows[1:])
    assert (tmp_path / "p" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_preset_before_build_table_is_not_a_misplaced_flag(tmp_path, capsys):
    out_path = tmp_path / "table.json"
    code, out, err = run(capsys, "--preset", "paper", "build-table", "--widths", "64", "--ratios", "1", "--samples", "2", "--out", str(out_path))
    assert code == 0, err
    assert set(EntropyTable.load(out_path).entries) == {(64, 64)}


def test_build_table_writes_a_table_for_the_given_axes(tmp_path, capsys):
    out_path = tmp_path / "table.json"
    code, out, err = run(capsys, "build-table", "--widths", "64,128", "--ratios", "1,1.5", "--samples", "2", "--seed", "3", "--out", str(out_path))
    assert code == 0, err
    table = EntropyTable.load(out_path)
    assert (table.samples, table.seed, table.eps) == (2, 3, 1e-3)
    assert set(table.entries) == {(64, 64), (64, 96), (128, 128), (128, 192)}
    assert all(se >= 0 for _, se in table.entries.values())


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--params", "64X"], ["--params", "unknown unit 'X'"]),
        (["--flops=-5G"], ["--flops", "non-negative"]),
        (["--flops", "0"], ["flops", "positive"]),
        (["--flops", "1G"], ["no architecture", "flops"]),
        (["--params", "26.33M", "--latency-ms", "45", "--profile", "{slow}"], ["not all of them together"]),
        (["--latency-ms", "30"], ["--profile"]),
        (["--latency-ms", "30", "--profile", "{bad}"], ["device profile"]),
        (["--latency-ms", "30", "--profile", "{missing}"], ["not found"]),
        (["--pareto", "speed=1:2:3"], ["--pareto", "METRIC"]),
        (["--widths", "64,100"], ["multiple"]),
        (["--alpha", "0.5"], ["alpha"]),
        (["--parents", "600"], ["parents"]),
        (["--flops-convention", "macs"], ["--flops-convention", "invalid choice"]),
        (["--preset", "opt"], ["--preset", "invalid choice"]),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, words):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "layers": "nope"}')
    slow = tmp_path / "slow.json"
    profile = json.loads(PROFILE.read_text())
    for layer in profile["layers"]:
        layer["decode"]["median_ms"] = [v + (50.0 if layer["width"] == 64 else 0.0) for v in layer["decode"]["median_ms"]]
    slow.write_text(json.dumps(profile))
    paths = {"bad": bad, "slow": slow, "missing": tmp_path / "nope.json"}
    argv = [a.format(**paths) for a in argv]
    code, out, err = run(capsys, *SMALL, "--out", str(tmp_path / "a.json"), *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--samples", "2"], "--samples is a flag of `merino-edge search build-table`"),
        (["--flops", "60G", "build-table"], "--flops: a flag of `merino-edge search` alone"),
        (["build-table", "--flops", "60G"], "unrecognized arguments: --flops 60G"),
    ],
)
def test_search_and_build_table_do_not_share_flags(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1
