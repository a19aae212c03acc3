"""`merino-edge search --profile` refuses a malformed or foreign device profile with one clear line."""

import json
from pathlib import Path

import pytest

from merino_edge.cli import main
from merino_edge.errors import InputError
from merino_edge.search.latency import LatencyModel

TINY_PROFILE = Path(__file__).resolve().parents[1] / "search" / "data" / "tiny_profile.json"

RAW = json.loads(TINY_PROFILE.read_text())
SEARCH = ["search", "--latency-ms", "30ms", "--iterations", "20", "--population", "8", "--parents", "2"]


def broken(tmp_path, **changes) -> str:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({**RAW, **changes}))
    return str(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema_version": 2}, "schema_version 2 is not supported"),
        ({"layers": [e for e in RAW["layers"] if e["width"] != 384]}, "missing layer E=384 R=1"),
        ({"head": {"decode": {"median_ms": [1.0]}}}, "head.decode.spread_ms"),
    ],
)
def test_search_refuses_the_profile_in_one_line(tmp_path, capsys, changes, message):
    assert main([*SEARCH, "--profile", broken(tmp_path, **changes)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_search_refuses_a_file_that_is_not_json(tmp_path, capsys):
    path = tmp_path / "profile.json"
    path.write_text("RAM 1766/3964MB (lfb 197x4MB)")
    assert main([*SEARCH, "--profile", str(path)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_a_profile_of_another_backend_is_refused_when_a_backend_is_asked(tmp_path):
    path = broken(tmp_path, backend={**RAW["backend"], "name": "torch"})
    with pytest.raises(InputError, match="measured on backend 'torch', not 'ort': profile again with --backend ort"):
        LatencyModel.from_file(path, backend="ort")
