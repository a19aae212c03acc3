"""Peak memory of one long prefill: process RSS before it, and the peak RSS during it.

    python benchmarks/prefill_memory.py BUNDLE [--tokens 2000] [--backend ort] [--json PATH]

Each (backend, mode) runs in a fresh subprocess, so that the peak (getrusage's
ru_maxrss) belongs to that prefill alone: the backend is created, one short
prefill warms it up, RSS is read, then one prefill of --tokens random token ids
runs (mode "generate": `Backend.prefill`, which returns the last position's
logits) or one `Backend.score` of the same ids (mode "score": every position,
what lm-eval asks for).  Prints a table and writes JSON (default
benchmarks/results/prefill_memory.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "prefill_memory.json"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(bundle: str, backend: str, mode: str, tokens: int) -> dict:
    """In this process: RSS before and peak RSS of one prefill (see the module docstring)."""
    import numpy as np

    from merino_edge.runtime import create_backend

    engine = create_backend(bundle, backend, threads=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, engine.vocab_size, size=(1, tokens), dtype=np.int64)
    engine.prefill(ids[:, :8])
    engine.reset()
    before = _rss_mib()
    logits = engine.prefill(ids) if mode == "generate" else engine.score(ids)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"backend": backend, "mode": mode, "tokens": tokens, "vocab": engine.vocab_size, "logits_shape": list(logits.shape),
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1), "prefill_peak_over_before_mib": round(peak - before, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--backend", nargs="+", default=["ort"])
    p.add_argument("--modes", nargs="+", default=["generate", "score"])
    p.add_argument("--json", default=str(RESULTS))
    p.add_argument("--one", nargs=2, metavar=("BACKEND", "MODE"), help=argparse.SUPPRESS)  # the subprocess's job
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.bundle, *args.one, args.tokens)))
        return
    rows = []
    for backend in args.backend:
        for mode in args.modes:
            out = subprocess.run([sys.executable, __file__, args.bundle, "--tokens", str(args.tokens), "--one", backend, mode],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'backend':<8} {'mode':<9} {'tokens':>6} {'vocab':>6} {'logits':<16} {'RSS before':>11} {'peak RSS':>9} {'peak - before':>14}")
    for r in rows:
        print(f"{r['backend']:<8} {r['mode']:<9} {r['tokens']:>6} {r['vocab']:>6} {str(r['logits_shape']):<16} "
              f"{r['rss_before_mib']:>8.1f} MiB {r['peak_rss_mib']:>5.1f} MiB {r['prefill_peak_over_before_mib']:>10.1f} MiB")
    print(f"load average: {os.getloadavg()}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "loadavg": os.getloadavg()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
