import pytest

from merino_edge.errors import InputError
from merino_edge.fileio import read_json, write_bytes_atomic, write_json_atomic


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
