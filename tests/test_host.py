"""Facts about any machine (CPU model, last-level cache, usable CPUs) from fixture trees."""

import os

from merino_edge.host import cpu_model, last_level_cache_bytes, usable_cpus


def test_cpu_model_from_cpuinfo(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n")
    assert cpu_model(tmp_path) == "ARMv8 Processor rev 1 (v8l)"


def test_last_level_cache_from_sysfs(tmp_path):
    assert last_level_cache_bytes(tmp_path) is None
    for index, size in enumerate(["48K", "2048K", "4M"]):
        folder = tmp_path / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        (folder / "size").write_text(size + "\n")
    assert last_level_cache_bytes(tmp_path) == 4 << 20


def test_usable_cpus_follow_the_affinity_mask():
    assert usable_cpus() == len(os.sched_getaffinity(0))
