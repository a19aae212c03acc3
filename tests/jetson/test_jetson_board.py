"""Board, L4T and JetPack detection from fixture trees; nvpmodel / jetson_clocks off a Jetson."""

from pathlib import Path

import pytest

from merino_edge.errors import IncompatibleError, MerinoError, MissingDependencyError
from merino_edge.jetson import power
from merino_edge.jetson.board import clocks_locked, detect_board, jetpack_release, l4t_release


def make_root(tmp_path: Path, model: str | None, release: str | None) -> Path:
    if model is not None:
        (tmp_path / "proc" / "device-tree").mkdir(parents=True)
        (tmp_path / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\x00")
    if release is not None:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "nv_tegra_release").write_text(release + "\n")
    return tmp_path


ORIN_NANO = "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024"
NANO = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022"
XAVIER = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023"


@pytest.mark.parametrize(
    ("model", "release", "l4t", "jetpack", "family"),
    [
        ("NVIDIA Jetson Orin Nano Developer Kit", ORIN_NANO, "36.3.0", "6.0", "Orin"),
        ("NVIDIA Jetson Nano Developer Kit", NANO, "32.7.1", "4.6.1", "Nano"),
        ("NVIDIA Jetson Xavier NX Developer Kit", XAVIER, "35.4.1", "5.1.2", "Xavier"),
    ],
)
def test_board_l4t_and_jetpack_from_fixture_files(tmp_path, model, release, l4t, jetpack, family):
    board = detect_board(make_root(tmp_path, model, release))
    assert board.model == model  # the device tree's trailing NUL is gone
    assert (board.l4t, board.jetpack, board.family) == (l4t, jetpack, family)


def test_an_l4t_release_missing_from_the_table_keeps_l4t_without_jetpack(tmp_path):
    root = make_root(tmp_path, "NVIDIA Jetson AGX Orin", "# R99 (release), REVISION: 1, GCID: 1, BOARD: generic")
    assert l4t_release(root) == "99.1.0"
    assert detect_board(root).jetpack is None and jetpack_release(None) is None


def test_not_a_jetson(tmp_path):
    assert detect_board(tmp_path) is None
    assert detect_board(make_root(tmp_path, "Raspberry Pi 4 Model B Rev 1.4", None)) is None


def test_locked_clocks_from_sysfs(tmp_path):
    assert clocks_locked(tmp_path) is None
    for cpu, (low, high) in enumerate([(1510400, 1510400), (1510400, 1510400)]):
        freq = tmp_path / "sys" / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_min_freq").write_text(f"{low}\n")
        (freq / "scaling_max_freq").write_text(f"{high}\n")
    assert clocks_locked(tmp_path) is True
    (freq / "scaling_min_freq").write_text("115200\n")
    assert clocks_locked(tmp_path) is False


def test_power_mode_and_clocks_refuse_off_a_jetson(tmp_path):
    with pytest.raises(IncompatibleError, match="not a Jetson"):
        power.power_mode(tmp_path)
    with pytest.raises(IncompatibleError, match="not a Jetson"):
        power.set_power_mode(0, tmp_path)
    with pytest.raises(IncompatibleError, match="not a Jetson"):
        power.lock_clocks(tmp_path)


def test_on_a_jetson_without_the_tools_the_error_names_the_package(tmp_path):
    root = make_root(tmp_path, "NVIDIA Jetson Orin Nano Developer Kit", ORIN_NANO)
    with pytest.raises(MissingDependencyError, match="nvidia-l4t-tools"):
        power.power_mode(root)


def test_nvpmodel_query_output():
    mode = power.parse_nvpmodel_query("NV Power Mode: 15W\n0\n")
    assert (mode.id, mode.name) == (0, "15W")
    with pytest.raises(MerinoError, match="could not read the power mode"):
        power.parse_nvpmodel_query("NVPM ERROR: failed to read PARAM")
