"""`merino-edge doctor` and `merino-edge build` on a machine without TensorRT (this one), and with TensorRT's real bindings (no GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from tensorrt_wheel import OLD_VERSION, VERSIONS, run_with_tensorrt, tensorrt_site_or_skip

from merino_edge import cli
from merino_edge.runtime.backends.tensorrt import version_problem
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


def _doctor_with(request, version: str) -> dict:
    """`run_doctor()` in a subprocess where `import tensorrt` is the real bindings of `version` (over stand-in libraries)."""
    code = "import json; from merino_edge.runtime.doctor import run_doctor; print(json.dumps(run_doctor().to_json()))"
    done = run_with_tensorrt(tensorrt_site_or_skip(request, version), "-c", code)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    return {**data, "tensorrt": next(f for f in data["findings"] if f["topic"] == "tensorrt")}


def test_doctor_refuses_jetpack_6_0s_tensorrt_8_and_says_what_to_install(request):
    report = _doctor_with(request, OLD_VERSION)
    assert not report["tensorrt"]["ok"]
    assert report["tensorrt"]["detail"].startswith(f"TensorRT {OLD_VERSION} is too old") and "JetPack 6.1" in report["tensorrt"]["detail"]
    assert (report["backend"], report["reason"]) == ("ort", f"TensorRT {OLD_VERSION} is too old")


def test_doctor_takes_tensorrt_10(request):
    report = _doctor_with(request, VERSIONS[0])
    assert report["tensorrt"] == {"topic": "tensorrt", "detail": VERSIONS[0], "ok": True}
    assert report["reason"] != "TensorRT is not installed"


def test_build_with_tensorrt_8_exits_2_with_one_line(request, tmp_path):
    done = run_with_tensorrt(tensorrt_site_or_skip(request, OLD_VERSION), "-m", "merino_edge.cli", "build", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"TensorRT {OLD_VERSION} is too old" in done.stderr


@pytest.mark.parametrize(("version", "usable"), [("8.6.2", False), ("10.3.0", True), ("10.13.0.35", True), ("11.4.0.106", True)])
def test_tensorrt_10_or_newer_is_required(version, usable):
    problem = version_problem(version)
    assert (problem is None) == usable
    if not usable:
        assert "JetPack 6.1 or newer" in problem
