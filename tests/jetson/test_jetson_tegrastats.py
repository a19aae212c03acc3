"""tegrastats parsing on lines in each board family's public format, and the live collector."""

import stat
import sys
from pathlib import Path

import pytest

from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.jetson.tegrastats import TegrastatsCollector, parse_line, parse_lines

DATA = Path(__file__).parent / "data"


def lines(board: str) -> list[str]:
    return (DATA / f"tegrastats_{board}.txt").read_text().splitlines()


def test_nano_rails_without_units_and_busy_line():
    idle, busy = parse_lines(lines("nano"))
    assert (idle.ram_used_mb, idle.ram_total_mb, idle.swap_used_mb, idle.swap_total_mb) == (1766, 3964, 0, 2048)
    assert idle.cpu_load == (24.0, 15.0, 13.0, 10.0) and idle.cpu_freq_mhz == (1224,) * 4
    assert idle.emc_load == 0.0 and idle.emc_freq_mhz is None and idle.gpu_load == 0.0
    assert idle.temperatures_c["GPU"] == 23.5 and idle.temperatures_c["thermal"] == 24.5
    assert idle.power_mw == {"POM_5V_IN": 2545, "POM_5V_GPU": 0, "POM_5V_CPU": 549}
    assert idle.power_avg_mw["POM_5V_CPU"] == 529
    assert busy.cpu_load == (97.0, 88.0, None, None) and busy.cpu_freq_mhz == (1479, 1479, None, None)
    assert (busy.emc_load, busy.emc_freq_mhz, busy.gpu_load, busy.gpu_freq_mhz) == (31.0, 1600, 76.0, 921)
    assert busy.swap_cached_mb == 1 and busy.timestamp is None


def test_tx1_old_format_with_one_cluster_frequency():
    (s,) = parse_lines(lines("tx1"))
    assert s.cpu_load == (17.0, 13.0, 29.0, 5.0) and s.cpu_freq_mhz == (408,) * 4
    assert (s.emc_load, s.emc_freq_mhz, s.gpu_load, s.gpu_freq_mhz) == (1.0, 408, 3.0, 76)
    assert s.swap_cached_mb == 295 and s.power_mw == {} and s.temperatures_c == {}


def test_xavier_agx_rails_named_without_vdd():
    s = parse_line(lines("xavier_agx")[0])
    assert len(s.cpu_load) == 8 and s.cpu_freq_mhz[0] == 1190
    assert (s.emc_freq_mhz, s.gpu_freq_mhz) == (2133, 1377)
    assert s.power_mw == {"GPU": 0, "CPU": 154, "SOC": 1076, "CV": 0, "VDDRQ": 153, "SYS5V": 1814}
    assert s.temperatures_c["Tdiode"] == 41.0 and s.temperatures_c["CPU"] == 39.5


def test_xavier_nx_bracketed_gpu_frequency_and_mw_rails():
    s = parse_line(lines("xavier_nx")[0])
    assert s.cpu_load == (3.0, 7.0, 1.0, 0.0, None, None)
    assert s.cpu_freq_mhz == (1904, 1906, 1905, 1907, None, None)
    assert (s.gpu_load, s.gpu_freq_mhz, s.emc_freq_mhz) == (0.0, 510, 1600)
    assert s.power_mw == {"VDD_IN": 5079, "VDD_CPU_GPU_CV": 696, "VDD_SOC": 1104}
    assert "VIC_FREQ" not in s.power_mw and "APE" not in s.power_mw


def test_orin_nano_timestamp_lowercase_sensors_and_no_emc():
    first, second = parse_lines(lines("orin_nano"))
    assert first.timestamp == "12-23-2024 22:54:11"
    assert (first.ram_used_mb, first.ram_total_mb) == (3162, 7620)
    assert first.emc_load is None and first.gpu_load == 1.0
    assert first.temperatures_c == {"cpu": 62.843, "soc2": 61.968, "soc0": 60.625, "gpu": 61.687, "tj": 62.843, "soc1": 61.687}
    assert first.power_mw["VDD_IN"] == 3913 and first.power_avg_mw["VDD_IN"] == 3922
    assert second.gpu_load == 99.0 and second.cpu_load[:4] == (45.0, 38.0, 52.0, 41.0)


def test_orin_agx_drops_powered_down_sensors():
    s = parse_line(lines("orin_agx")[0])
    assert len(s.cpu_load) == 12 and s.cpu_load.count(None) == 4
    assert (s.emc_load, s.emc_freq_mhz, s.gpu_load, s.gpu_freq_mhz) == (0.0, 2133, 0.0, 0)
    assert "CV0" not in s.temperatures_c and "GPU" not in s.temperatures_c
    assert s.temperatures_c["SOC2"] == 39.593
    assert set(s.power_mw) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}


def test_a_line_that_is_not_tegrastats_is_refused():
    with pytest.raises(InputError, match="not a tegrastats line"):
        parse_line("nvpmodel: NV Power Mode: 15W")


def test_collector_without_tegrastats_says_what_is_missing():
    with pytest.raises(MissingDependencyError, match="only on a Jetson"):
        TegrastatsCollector(100, command="tegrastats-not-installed").start()


def test_collector_runs_the_command_and_keeps_the_latest_sample(tmp_path):
    # A stand-in for the board's tegrastats binary: prints the Orin Nano lines at --interval.
    exe = tmp_path / "tegrastats"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "interval = int(sys.argv[sys.argv.index('--interval') + 1]) / 1000\n"
        f"lines = open({str(DATA / 'tegrastats_orin_nano.txt')!r}).read().splitlines()\n"
        "print('tegrastats: starting', flush=True)\n"
        "for i in range(1000):\n"
        "    print(lines[min(i, len(lines) - 1)], flush=True)\n"
        "    time.sleep(interval)\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    with TegrastatsCollector(20, command=str(exe)) as collector:
        sample = collector.wait(samples=2, timeout=20)
        assert sample is not None and sample.gpu_load == 99.0
        assert collector.latest().power_mw["VDD_IN"] == 9112
        assert collector.running
    assert not collector.running  # the context stopped the subprocess
