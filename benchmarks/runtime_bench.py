"""merino-edge on ONNX Runtime vs `transformers` generate() on the same weights (CPU, batch 1).

    python benchmarks/runtime_bench.py [--threads 2 1] [--prompt-tokens 32] [--new-tokens 128] [--repeats 3]

For each architecture (by default the two that `merino-edge search` picks: at its
default budget, 60 GFLOPs, and at `--params 50M`) it builds a random-init
checkpoint (speed does not depend on the weights' values) with a 32k SentencePiece
tokenizer trained on the built-in corpus, exports an FP32 bundle, then measures in
separate fresh processes, so each peak RSS is its own:

- merino-edge: `merino-edge bench` (ORT, IOBinding, greedy, eos ignored);
- transformers: `model.generate()` greedy with `min_new_tokens` = `max_new_tokens`;
  time to first token = a 1-token generate(), decode = the rest of a full one.

Both at 2 threads (the issue's setting) and at 1: on a 2-core machine shared with
other work, torch's spinning OpenMP threads slow down far more than ONNX Runtime's
at 2 threads, and the 1-thread rows show the comparison without that effect.

Decode speed is also given as a fraction of the memory-bandwidth bound: FP32
weight bytes read per decode step (every layer execution reads its weights; the
tied head reads the whole embedding; one row each of the token and position
tables) over this machine's copy bandwidth (a numpy copy on the same number of
threads, bytes read + written).
Prints a table and writes benchmarks/results/runtime_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from merino_edge.arch import ArchSpec, Block, load_arch
from merino_edge.fileio import write_json_atomic
from merino_edge.host import cpu_model

RESULTS = Path(__file__).resolve().parent / "results" / "runtime_bench.json"

# What `merino-edge search` picks (seed 0): with no budget flag (--flops 60G) and with --params 50M.
ARCHS = {
    "search-default-60GFLOPs": ArchSpec(blocks=(Block(64, 1.0, 1), Block(128, 1.0, 4), Block(128, 1.5, 4), Block(128, 1.0, 4))),
    "search-params-50M": ArchSpec(blocks=(Block(640, 1.0, 4), Block(1024, 1.0, 4), Block(1024, 1.0, 4), Block(1024, 1.0, 4))),
}


def decode_bytes_per_token(arch: ArchSpec, bytes_per_value: int = 4) -> int:
    """Weight bytes one decode step reads: all executed weights, the head, one embedding row each."""
    rows = 2 * arch.proj_dim  # token + position embedding rows
    head = arch.vocab_size * arch.proj_dim  # the tied head reads the whole token table
    executed = arch.executed_params() - arch.embedding_params() + sum(a * b for a, b in arch.projections()) + 2 * arch.blocks[-1].width
    return (executed + head + rows) * bytes_per_value


def copy_bandwidth(threads: int, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second moved by a large numpy copy split over `threads` threads (read + write), best of `repeats`."""
    src = np.ones(megabytes * 2**20 // 8)
    dst = np.empty_like(src)
    parts = list(zip(np.array_split(dst, threads), np.array_split(src, threads), strict=True))
    with ThreadPoolExecutor(threads) as pool:  # np.copyto releases the GIL

        def copy() -> None:
            list(pool.map(lambda pair: np.copyto(*pair), parts))

        best = min(_timed(copy) for _ in range(repeats))
    return 2 * src.nbytes / best


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# ------------------------------------------------------------------ building


def build_tokenizer(path: Path, vocab_size: int = 32000) -> Path:
    from merino_edge.tokenizer import train_tokenizer
    from merino_edge.training.builtin_corpus import builtin_documents

    if not path.is_file():
        train_tokenizer((d["text"] for d in builtin_documents()), path, vocab_size=vocab_size)
    return path


def build_bundle(name: str, arch: ArchSpec, tokenizer: Path, work: Path) -> tuple[Path, Path]:
    """A random-init checkpoint of `arch` and its FP32 bundle (reused when already there)."""
    import torch

    from merino_edge.export.package import export_bundle
    from merino_edge.model import MeRinoConfig, MeRinoForCausalLM
    from merino_edge.training.checkpoint import save_model_dir

    ckpt, bundle = work / name / "ckpt", work / name / "bundle"
    if not (ckpt / "config.json").is_file():
        torch.manual_seed(0)
        save_model_dir(MeRinoForCausalLM(MeRinoConfig.from_arch(arch)).eval(), tokenizer, ckpt)
    if not (bundle / "manifest.json").is_file():
        export_bundle(ckpt, bundle, fp32=True, overwrite=True)
    return ckpt, bundle


# ------------------------------------------------------------------ measuring


def run_merino(bundle: Path, threads: int, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "merino_edge.cli", "bench", str(bundle), "--backend", "ort", "--threads", str(threads)]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_transformers(ckpt: Path, threads: int, args, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--transformers-worker", str(ckpt), "--threads", str(threads), "--json", str(out)]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def transformers_worker(args) -> None:
    """In its own process: time transformers generate() on the checkpoint, write JSON."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM

    import merino_edge.model  # noqa: F401  (registers the Auto classes)
    from merino_edge.runtime.bench import bench_prompt, peak_rss_bytes
    from merino_edge.tokenizer import Tokenizer

    torch.set_num_threads(args.threads[0])
    ckpt = Path(args.transformers_worker)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    ids = torch.tensor([bench_prompt(Tokenizer(ckpt / "tokenizer.model"), args.prompt_tokens)])

    def generate(n: int) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=3)
            elapsed = time.perf_counter() - start
        assert out.shape[1] == ids.shape[1] + n
        return elapsed

    generate(8)  # warm-up
    runs = [{"ttft_s": generate(1), "total_s": generate(args.new_tokens)} for _ in range(args.repeats)]
    ttft, total = statistics.median(r["ttft_s"] for r in runs), statistics.median(r["total_s"] for r in runs)
    result = {
        "backend": f"transformers {merino_edge_versions()['transformers']} generate()",
        "ttft_s": ttft,
        "prefill_tokens_per_s": args.prompt_tokens / ttft,
        "decode_tokens_per_s": (args.new_tokens - 1) / (total - ttft),
        "total_s": total,
        "peak_rss_bytes": peak_rss_bytes(),
        "runs": runs,
    }
    write_json_atomic(args.json, result)


def merino_edge_versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("merino-edge", "onnxruntime", "torch", "transformers", "numpy")}


# ------------------------------------------------------------------ report


def table(rows: list[dict]) -> str:
    head = f"{'arch':<26}{'runtime':<34}{'threads':>8}{'decode tok/s':>13}{'TTFT ms':>9}{'prefill tok/s':>14}{'peak RSS MiB':>13}{'of BW bound':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['arch']:<26}{r['runtime']:<34}{r['threads']:>8}{r['decode_tokens_per_s']:>13.1f}{r['ttft_s'] * 1000:>9.1f}"
            f"{r['prefill_tokens_per_s']:>14.0f}{r['peak_rss_bytes'] / 2**20:>13.0f}{r['bandwidth_fraction']:>11.0%}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="arch.json to benchmark (repeatable; default: the two search picks)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="thread counts to compare at (default: 2 1)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", help="keep checkpoints and bundles here (default: a temp dir)")
    parser.add_argument("--json", default=str(RESULTS))
    parser.add_argument("--transformers-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.transformers_worker:
        transformers_worker(args)
        return 0

    archs = {Path(a).stem: load_arch(a) for a in args.arch} if args.arch else ARCHS
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every figure: say how much there was
    tokenizer = build_tokenizer(work / "tokenizer.model")
    rows, speedup = [], {}
    for name, arch in archs.items():
        ckpt, bundle = build_bundle(name, arch, tokenizer, work)
        for threads in args.threads:
            bandwidth = copy_bandwidth(threads)  # measured right before: the load on a shared machine drifts
            bound = bandwidth / decode_bytes_per_token(arch)
            for runtime, result in (
                ("merino-edge ORT (fp32, IOBinding)", run_merino(bundle, threads, args, work / name / f"merino-{threads}.json")),
                ("transformers generate() (fp32)", run_transformers(ckpt, threads, args, work / name / f"transformers-{threads}.json")),
            ):
                rows.append(
                    {
                        "arch": name,
                        "arch_short": arch.short(),
                        "params": arch.params(),
                        "executed_params": arch.executed_params(),
                        "runtime": runtime,
                        "threads": threads,
                        "decode_bytes_per_token": decode_bytes_per_token(arch),
                        "copy_bandwidth_bytes_per_s": bandwidth,
                        "bandwidth_bound_tokens_per_s": bound,
                        "bandwidth_fraction": result["decode_tokens_per_s"] / bound,
                        **{k: result[k] for k in ("decode_tokens_per_s", "ttft_s", "prefill_tokens_per_s", "peak_rss_bytes", "runs")},
                    }
                )
            key = f"{name} @ {threads} threads"
            speedup[key] = rows[-2]["decode_tokens_per_s"] / rows[-1]["decode_tokens_per_s"]
            print(f"{key}: {arch.short()}: decode speed-up {speedup[key]:.2f}x (copy bandwidth {bandwidth / 1e9:.1f} GB/s)", file=sys.stderr)
    print(table(rows))
    print("decode speed-up of merino-edge over transformers: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    record = {
        "schema_version": 1,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": load_at_start},
        "versions": merino_edge_versions(),
        "settings": {"batch": 1, "threads": args.threads, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats},
        "rows": rows,
        "decode_speedup": speedup,
    }
    write_json_atomic(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
