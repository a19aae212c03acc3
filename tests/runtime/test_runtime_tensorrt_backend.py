"""Backend selection around the TensorRT backend on a machine without TensorRT (this one)."""

from __future__ import annotations

import importlib.util
import logging
import shutil

import pytest

from merino_edge.bundle import Bundle
from merino_edge.engine_record import ENGINE_FILE, ENGINE_NAME, EngineRecord, HostInfo, manifest_profiles
from merino_edge.errors import MissingDependencyError
from merino_edge.runtime import create_backend
from merino_edge.runtime.doctor import run_doctor

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")


@pytest.fixture
def bundle_with_engine(tiny_bundle, tmp_path):
    """A copy of tiny_bundle whose manifest records an engine built on a Jetson."""
    path = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    bundle = Bundle.load(path)
    (path / ENGINE_FILE).parent.mkdir()
    (path / ENGINE_FILE).write_bytes(b"a plan TensorRT wrote on the board")
    fp16 = bundle.onnx_path("fp16").name
    record = EngineRecord(
        onnx_file=fp16,
        onnx_sha256=bundle.manifest.files[fp16],
        host=HostInfo("10.3.0", "Orin", "8.7", "36.3.0", "6.0"),
        workspace_mib=1024,
        max_batch=bundle.max_batch,
        max_prompt=bundle.max_prompt,
        max_context=bundle.max_context,
        profiles=manifest_profiles(bundle.manifest),
        build_seconds=30.0,
        built_at="2025-01-01T00:00:00+00:00",
    )
    bundle.add_engine(ENGINE_FILE, record.to_json(), name=ENGINE_NAME)
    return path


def test_auto_falls_back_to_onnx_runtime_with_a_notice(bundle_with_engine, caplog):
    with caplog.at_level(logging.INFO, logger="merino_edge.runtime"):
        backend = create_backend(bundle_with_engine, "auto")
    assert backend.name == "ort"
    notice = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "TensorRT is not installed" in notice and "falling back to ONNX Runtime" in notice


def test_asking_for_tensorrt_says_what_to_install(bundle_with_engine):
    with pytest.raises(MissingDependencyError, match="python3-libnvinfer"):
        create_backend(bundle_with_engine, "tensorrt")


def test_doctor_on_a_bundle_with_an_engine_still_picks_ort_here(bundle_with_engine):
    report = run_doctor(bundle_with_engine)
    assert (report.backend, report.reason) == ("ort", "TensorRT is not installed")
