"""Hand-made profiles with cold timings and a calibration, for the cache-aware latency model."""

import numpy as np

from merino_edge.device_profile import DeviceProfile
from merino_edge.search.latency import MIB, LatencyModel


def with_cold_timings(raw: dict) -> dict:
    """`raw` with cold decode timings: every part twice its warm time, the call overhead 0.5 ms."""

    def cold(entry):
        return {**entry, "decode_cold": {k: [2 * v for v in vs] for k, vs in entry["decode"].items()}}

    data = {k: [cold(e) for e in raw[k]] for k in ("layers", "projections", "final_norms")}
    return {**raw, **data, "embedding": cold(raw["embedding"]), "head": cold(raw["head"]), "overhead_cold_ms": 0.5}


def calibrated(raw: dict, space, context: int, mu_range=(0.2, 0.8), prefill_scales=None) -> DeviceProfile:
    """`raw` with cold timings and mu rising from mu_range[0] to mu_range[1] over the traffic of `space`'s archs.

    `prefill_scales` defaults to 1.3, 1.1, 1.05, ... (one per prefill length of `raw`).
    """
    prefill_scales = prefill_scales or [1.3, 1.1, 1.05, 1.02][: len(raw["prefill_lengths"])]
    data = with_cold_timings(raw)
    model = LatencyModel(DeviceProfile.from_json(data))
    genomes = space.sample(np.random.default_rng(0), 300)
    traffic = np.log([model.decode_terms(space.to_arch(g), context).traffic / MIB for g in genomes])
    slope = (mu_range[1] - mu_range[0]) / (traffic.max() - traffic.min())
    calibration = {"archs": [], "miss_intercept": mu_range[0] - slope * traffic.min(), "miss_slope": slope,
                   "prefill_scales": list(prefill_scales), "decode_mape": 0.0, "prefill_mape": 0.0, "points": 0}
    return DeviceProfile.from_json({**data, "calibration": calibration})
