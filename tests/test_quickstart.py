"""The whole pipeline at its smallest settings: real profiling, search, training, export, socket."""

import json

import pytest

from merino_edge.arch import Axes, load_arch
from merino_edge.bundle import Bundle
from merino_edge.quickstart import QuickstartConfig, run_quickstart

TINY_GRID = {
    "decode_contexts": [0, 32],
    "prefill_lengths": [8, 32],
    "warmup": 1,
    "repetitions": 3,
    "max_repetitions": 5,
    "seconds_per_point": 0.02,
    "flush_bytes": 4 << 20,
    "quick": True,
}


@pytest.mark.slow
def test_quickstart_end_to_end_then_reuses_everything(tmp_path, capsys):
    cfg = QuickstartConfig(
        workdir=tmp_path / "qs",
        axes=Axes(widths=(64, 128), ratios=(1.0, 2.0), depths=(1, 2)),
        blocks=2,
        vocab_size=512,
        max_positions=96,
        latency_context=32,
        steps=6,
        seq_len=32,
        batch_tokens=256,
        threads=1,
        max_tokens=8,
        profile_grid=TINY_GRID,
        calibration=2,
        progress=False,
    )
    summary = run_quickstart(cfg)
    first = capsys.readouterr()

    work = cfg.workdir
    arch = load_arch(work / "arch.json")
    record = json.loads((work / "arch.json").read_text())["search"]
    assert arch.vocab_size == 512 and len(arch.blocks) == 2
    # The search ran under a latency budget taken from the measured profile.
    assert record["budget"]["latency_ms"] > 0
    assert record["costs"]["decode_latency_ms"] <= record["budget"]["latency_ms"]
    assert len(json.loads((work / "profile.json").read_text())["calibration"]["archs"]) == 2
    trained = json.loads((work / "checkpoint" / "train_result.json").read_text())
    assert trained["steps"] == 6 and trained["val_loss"] > 0
    assert Bundle.load(work / "bundle").arch == arch
    assert not (work / "api.sock").exists()  # the server removed its socket on the way out
    assert "merino-edge quickstart: done" in summary
    assert f"merino-edge serve {work / 'bundle'}" in summary
    assert "predicted" in summary and "measured" in summary
    assert cfg.prompt in first.out  # the completion streamed through the socket was printed

    # A second run reuses every artifact and still answers through the socket.
    run_quickstart(cfg)
    second = capsys.readouterr()
    for stage in ("profile", "search", "train", "export"):
        assert f"{stage}: reusing" in second.err
