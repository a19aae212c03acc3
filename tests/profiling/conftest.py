"""A tiny search space, exported once per session, for the profiler and validation tests."""

from types import SimpleNamespace

import pytest

from merino_edge.arch import Axes


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """axes, model dims, a fast grid, and a folder of exported micro-graphs (copy it before profiling into it)."""
    from merino_edge.device_profile import Measurement
    from merino_edge.profiling.export import export_micro_graphs
    from merino_edge.profiling.run import Grid

    axes = Axes(widths=(64, 128), ratios=(1.0, 2.0), depths=(1, 2))
    model = {"vocab_size": 256, "proj_dim": 128, "max_positions": 128}
    graphs = tmp_path_factory.mktemp("graphs")
    export_micro_graphs(graphs, axes=axes, progress=False, **model)
    grid = Grid((0, 32, 127), (8, 32), Measurement(warmup=1, repetitions=3, max_repetitions=3))
    return SimpleNamespace(axes=axes, model=model, grid=grid, graphs=graphs)
