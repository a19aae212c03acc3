"""`merino-edge doctor` and `merino-edge build` on a machine without TensorRT (this one)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from merino_edge import cli
from merino_edge.runtime.doctor import run_doctor

no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")


@no_tensorrt
def test_doctor_names_onnx_runtime_as_the_pick_and_says_why():
    report = run_doctor()
    assert report.backend == "ort"
    assert report.reason == "TensorRT is not installed"
    assert not report["tensorrt"].ok and "python3-libnvinfer" in report["tensorrt"].detail
    assert report["onnxruntime"].ok and "CPUExecutionProvider" in report["onnxruntime"].detail
    assert report.render().splitlines()[-1] == "serve picks: ort (TensorRT is not installed)"


def test_doctor_never_imports_torch():
    code = "import sys; from merino_edge.runtime.doctor import run_doctor; r = run_doctor(); assert 'torch' not in sys.modules, 'torch imported'; print(r.backend)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("ort", "tensorrt")


@no_tensorrt
def test_doctor_command_prints_the_report_and_json(capsys):
    assert cli.main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and text.rstrip().endswith("serve picks: ort (TensorRT is not installed)")
    assert cli.main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == 1 and data["backend"] == "ort"
    assert {f["topic"] for f in data["findings"]} >= {"tensorrt", "cuda bindings", "gpu", "onnxruntime", "jetson", "torch"}


@no_tensorrt
def test_build_without_tensorrt_exits_2_with_one_line_saying_what_to_install(tiny_bundle, capsys):
    assert cli.main(["build", str(tiny_bundle), "--workspace", "256"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("merino-edge: error: TensorRT is not installed")
    assert "sudo apt install python3-libnvinfer" in err and "pip install tensorrt pycuda" in err


def test_doctor_on_something_that_is_not_a_bundle_exits_2(tmp_path, capsys):
    assert cli.main(["doctor", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
