"""Every TensorRT name merino-edge uses, checked against TensorRT's real Python bindings (no GPU needed).

The bindings come from PyPI's wheels over stand-in libraries (tests/tensorrt_wheel.py);
the names are found in the source by a type inference over its AST (tests/tensorrt_usage.py),
so a new call is checked without anyone listing it.  Nothing here builds or runs an engine:
the stand-ins return NULL for every TensorRT object.  Run with `-rP` to see the summary lines.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap

import pytest
from shared_paths import ROOT
from tensorrt_usage import Finder, deprecated, find_uses, problems
from tensorrt_wheel import OLD_VERSION, VERSIONS, run_with_tensorrt, tensorrt_site_or_skip

SOURCES = ("merino_edge", "benchmarks", "tests/gpu")


def _sources():
    return sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))


def _api(request, version: str) -> dict:
    done = run_with_tensorrt(tensorrt_site_or_skip(request, version), "tests/tensorrt_wheel.py")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=VERSIONS)
def api(request) -> dict:
    return _api(request, request.param)


@pytest.fixture(scope="module")
def uses(api):
    return find_uses(api, _sources(), ROOT)


def test_every_tensorrt_name_merino_edge_uses_exists_with_a_compatible_signature(api, uses):
    assert problems(api, uses) == []
    names = {u.label for u in uses}
    old = sorted({u.label for u in uses if deprecated(api, u)})
    note = f"; deprecated there: {', '.join(old)}" if old else ""
    print(f"TensorRT {api['version']} bindings: {len(names)} TensorRT names used by merino-edge ({len(uses)} uses), all found{note}")


def test_the_inference_reaches_every_file_that_touches_tensorrt(uses):
    touching = {str(p.relative_to(ROOT)) for p in _sources() if re.search(r"^\s*import tensorrt|\btrt\.\w", p.read_text(), re.MULTILINE)}
    reached = {u.where.split(":")[0] for u in uses}
    assert touching and touching <= reached


def test_older_bindings_fail_the_check_where_merino_edge_needs_tensorrt_10(request):
    api = _api(request, OLD_VERSION)
    found = "\n".join(problems(api, find_uses(api, _sources(), ROOT)))
    assert f"NetworkDefinitionCreationFlag.STRONGLY_TYPED does not exist in TensorRT {OLD_VERSION}" in found
    assert "trt.ExecutionContextAllocationStrategy does not exist" in found
    assert "ICudaEngine.create_execution_context(...) does not fit" in found


def test_the_check_names_a_missing_method_a_wrong_keyword_a_missing_argument_and_a_read_only_property(request):
    api = _api(request, VERSIONS[0])
    source = textwrap.dedent(
        """
        def build(trt, path):
            builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
            network = builder.create_netwrok(0)
            config = builder.create_builder_config()
            config.set_timing_cache(config.create_timing_cache(b""), ignore=True)
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)
            parser = trt.OnnxParser(config, trt.Logger())
            parser.num_errors = 0
        """
    )
    found = problems(api, Finder(api).run({"snippet.py": ast.parse(source)}))
    assert found == [
        "snippet.py:4: Builder.create_netwrok does not exist in TensorRT 10.3.0",
        "snippet.py:6: IBuilderConfig.set_timing_cache(...) does not fit TensorRT 10.3.0: no parameter 'ignore'",
        "snippet.py:7: IBuilderConfig.set_memory_pool_limit(...) does not fit TensorRT 10.3.0: missing pool_size",
        "snippet.py:8: OnnxParser.__init__(...) does not fit TensorRT 10.3.0: network wants INetworkDefinition, given IBuilderConfig",
        "snippet.py:9: OnnxParser.num_errors cannot be assigned in TensorRT 10.3.0",
    ]


def test_network_flags_ask_each_version_for_a_strongly_typed_network(request, api):
    code = (
        "import tensorrt as trt; from merino_edge.export.tensorrt import network_flags;"
        "print(network_flags(trt), {m.name: int(m) for m in trt.NetworkDefinitionCreationFlag.__members__.values()})"
    )
    done = run_with_tensorrt(tensorrt_site_or_skip(request, api["version"]), "-c", code)
    assert done.returncode == 0, done.stderr
    flags, members = done.stdout.split(" ", 1)
    members = ast.literal_eval(members)
    asked = {name for name, bit in members.items() if int(flags) >> bit & 1}
    if api["version"].startswith("10."):
        assert asked == {"STRONGLY_TYPED"}
    else:  # 11 builds strongly typed networks only and ignores the deprecated flag
        assert asked == set()
        assert "always enabled" in api["classes"]["NetworkDefinitionCreationFlag"]["doc"]
