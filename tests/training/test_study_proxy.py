"""`merino-edge study proxy` on a tiny CPU setting: the correlation table, the plots, and resuming."""

from __future__ import annotations

import json
import math

import pytest
from local_text import training_texts

from merino_edge.arch import Axes
from merino_edge.cli import main
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.search.budgets import Budget
from merino_edge.training.study import PROXIES, RESULTS_FILE, StudyConfig, parse_budget, proxies, run_study, sample_archs

TINY_AXES = Axes(widths=(64, 128), ratios=(1.0, 2.0), depths=(1, 2))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    texts = training_texts(120_000)
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(texts))
    return path


def _config(corpus_file, out, **changes) -> StudyConfig:
    settings = dict(
        archs=4, budget=Budget(flops=2_000_000_000), tokens=512, data=(str(corpus_file),), out=str(out), device="cpu",
        axes=TINY_AXES, blocks=2, vocab_size=512, proj_dim=64, max_positions=64, min_fraction=0.0, text_unit="paragraph",
        val_fraction=0.1, seq_len=32, batch_tokens=256, micro_batch=8, eval_tokens=512, sensitivity_eps=(1e-3, 1e-1),
        sensitivity_alpha1=(0.0, 0.6, 1.0), progress=False,
    )  # fmt: skip
    settings.update(changes)
    return StudyConfig(**settings)


def _checkpoint_times(out) -> dict[str, int]:
    return {p.parent.parent.name: p.stat().st_mtime_ns for p in (out / "models").glob("*/trainer_state/checkpoint.pt")}


@pytest.mark.slow
def test_study_ranks_proxies_writes_plots_and_resumes_without_retraining(corpus_file, tmp_path):
    out = tmp_path / "study"
    cfg = _config(corpus_file, out)
    report = run_study(cfg)

    assert [c.proxy for c in report.correlations] == list(PROXIES)
    assert all(-1 <= c.spearman <= 1 and -1 <= c.kendall <= 1 for c in report.correlations)
    assert len(report.sensitivity) == 2 * 3 * 2  # eps x alpha1 x (beta, beta = 0)
    for name in PROXIES:
        assert (out / f"scatter_{name}.png").stat().st_size > 1000
    table = (out / "report.md").read_text()
    assert "| entropy |" in table and "| non_embedding_params |" in table and "Entropy sensitivity, beta = 0.0625" in table
    records = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert [r["id"] for r in records] == ["a000", "a001", "a002", "a003"]
    assert all(r["steps"] == 2 and math.isfinite(r["val_loss"]) for r in records)
    trained = _checkpoint_times(out)
    assert len(trained) == 4

    with pytest.raises(InputError, match="--resume"):
        run_study(cfg)
    with pytest.raises(IncompatibleError, match="tokens"):
        run_study(_config(corpus_file, out, tokens=1024), resume=True)

    # A kill after a3's training but before its result line: only a3 is looked at again, and not retrained.
    (out / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records[:3]) + '{"id": "a0')
    again = run_study(cfg, resume=True)
    assert _checkpoint_times(out)["a000"] == trained["a000"]
    assert again.correlations == report.correlations
    assert len(_lines := (out / RESULTS_FILE).read_text().splitlines()) == 5 and json.loads(_lines[-1])["id"] == "a003"


def test_sampled_architectures_are_distinct_and_within_the_budget(corpus_file, tmp_path):
    cfg = _config(corpus_file, tmp_path, archs=12, min_fraction=0.5, budget=Budget(params=250_000))
    archs = sample_archs(cfg)
    assert len({a.short() for a in archs}) == 12
    assert all(125_000 <= a.params() <= 250_000 and a.vocab_size == 512 and a.proj_dim == 64 for a in archs)
    assert proxies(archs[0], cfg)["non_embedding_params"] == archs[0].params() - archs[0].embedding_params()
    with pytest.raises(InputError, match="only .* distinct architectures"):
        sample_archs(_config(corpus_file, tmp_path, archs=500), rounds=4, per_round=512)


def test_budget_flag_parses_flops_and_params():
    assert parse_budget("flops=110G") == Budget(flops=110_000_000_000)
    assert parse_budget("params=61M,flops=1G") == Budget(params=61_000_000, flops=1_000_000_000)
    with pytest.raises(InputError, match="flops=N or params=N"):
        parse_budget("latency=3ms")


def test_cli_study_rejects_a_bad_budget_in_one_line(tmp_path, capsys):
    code = main(["study", "proxy", "--archs", "4", "--budget", "watts=5", "--tokens", "1K", "--data", "x.txt", "--out", str(tmp_path)])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
