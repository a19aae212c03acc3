"""`merino-edge export`, `generate` and `bench` through the CLI entry point."""

from __future__ import annotations

import json
import shutil

from merino_edge.bundle import Bundle
from merino_edge.cli import main
from merino_edge.runtime import Generator, SamplingParams


def test_export_command_writes_a_bundle(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--max-context", "64", "--max-batch", "2"]) == 0
    assert "graphs fp32" in capsys.readouterr().out
    bundle = Bundle.load(tmp_path / "b")
    assert (bundle.precisions, bundle.max_context, bundle.max_batch) == (["fp32"], 64, 2)
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err


def test_generate_streams_the_greedy_completion(tiny_bundle, capsys):
    expected = Generator.from_bundle(tiny_bundle, "ort", threads=1).generate("The kernel", SamplingParams(max_tokens=12, temperature=0)).text
    assert main(["generate", str(tiny_bundle), "--prompt", "The kernel", "--max-tokens", "12", "--temperature", "0", "--threads", "1"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_refuses_bad_input_in_one_line(tiny_bundle, tmp_path, capsys):
    assert main(["generate", str(tiny_bundle), "--prompt", "x", "--max-tokens", "500"]) == 2
    assert "exceeds the context of 128" in capsys.readouterr().err
    damaged = shutil.copytree(tiny_bundle, tmp_path / "damaged")
    (damaged / "model.onnx.data").write_bytes(b"\0" * 16)
    assert main(["generate", str(damaged), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.onnx.data is damaged" in err


def test_bench_prints_a_table_and_writes_json(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(tiny_bundle), "--prompt-tokens", "8", "--new-tokens", "6", "--repeats", "2", "--warmup", "0", "--threads", "1"]
    assert main([*args, "--json", str(out)]) == 0
    assert "decode" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (result["backend"], result["prompt_tokens"], result["new_tokens"]) == ("ort", 8, 6)
    assert [r["completion_tokens"] for r in result["runs"]] == [6, 6]
    assert result["decode_tokens_per_s"] > 0 and result["peak_rss_bytes"] > 10 * 2**20
