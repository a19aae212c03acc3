import pytest

from merino_edge.errors import IncompatibleError, InputError
from merino_edge.fileio import check_schema, read_json, write_bytes_atomic, write_json_atomic


def test_atomic_writes_replace_the_file_and_leave_no_temp_files(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "a.json", {"x": 1})
    assert read_json(path, "thing") == {"x": 1}
    write_bytes_atomic(path, b'{"x": 2}')
    assert read_json(path, "thing") == {"x": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert read_json(path, "thing") == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"^widget not found: .*nope\.json$"):
        read_json(tmp_path / "nope.json", "widget")
    with pytest.raises(InputError, match="^run the exporter first$"):
        read_json(tmp_path / "nope.json", "widget", missing="run the exporter first")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match=r"widget .*bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json", "widget")


def test_one_schema_check_for_every_format():
    assert check_schema({"schema_version": 2}, "thing", 3, oldest=1) == 2
    assert check_schema({}, "arch", 1, required=False) == 1
    with pytest.raises(InputError, match="thing: expected a JSON object"):
        check_schema([1], "thing", 1)
    with pytest.raises(IncompatibleError, match=r"thing: schema_version 4 is not supported \(this merino-edge reads 1 to 3\); upgrade merino-edge"):
        check_schema({"schema_version": 4}, "thing", 3, oldest=1, fix="make it again")
    with pytest.raises(IncompatibleError, match=r"schema_version None is not supported \(this merino-edge reads 1\); make it again"):
        check_schema({}, "thing", 1, fix="make it again")
    with pytest.raises(IncompatibleError, match="schema_version True"):
        check_schema({"schema_version": True}, "thing", 1)
    with pytest.raises(IncompatibleError, match="thing: not a merino-edge-bundle file \\(format 'other-tool'\\)"):
        check_schema({"format": "other-tool", "schema_version": 1}, "thing", 1, kind=("format", "merino-edge-bundle"))
