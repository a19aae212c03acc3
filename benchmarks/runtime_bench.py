"""merino-edge on ONNX Runtime (fp32, int8, int4 graphs) vs `transformers` generate() on the same weights (CPU, batch 1).

    python benchmarks/runtime_bench.py [--threads 2] [--contexts 32 512 1500] [--new-tokens 64] [--repeats 3]
                                       [--trained CKPT --trained-data SHARDS]

For each architecture (by default the two that `merino-edge search` picks: at its
default budget, 60 GFLOPs, and at `--params 50M`) it builds a random-init
checkpoint (speed does not depend on the weights' values) with a 32k SentencePiece
tokenizer trained on the built-in corpus, exports a bundle with the fp32, int8
and int4 graphs (`merino-edge export --quantize int8 --quantize int4`; their
perplexity on held-out built-in text is measured, which says little on random
weights), then measures in separate fresh processes, so each peak RSS is its own,
at every context (prompt length):

- merino-edge: `merino-edge bench --precision P` (ORT, IOBinding, greedy, eos ignored);
- transformers: `model.generate()` greedy with `min_new_tokens` = `max_new_tokens`;
  time to first token = a 1-token generate(), decode = the rest of a full one.

Decode speed is also given as a fraction of the memory-bandwidth bound: the
weight bytes one decode step reads, counted from the graph itself (every
initializer each node reads, each time it runs; a lookup reads one row), over
this machine's copy bandwidth (a numpy copy on the same number of threads,
bytes read + written).  transformers reads the fp32 weights.  Peak RSS is also
given against the weights plus the KV cache at that context, in the graph's
own cache type (float16 for int8 / int4, float32 for fp32 and transformers).

With `--trained`, the quality of quantization is measured where it means
something: that checkpoint (e.g. `benchmarks/train_cpu.py`'s model) exported
with int8 and int4, held-out perplexity on `--trained-data` (its shard dir).
Prints tables and writes benchmarks/results/runtime_bench.json.
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
QUANTIZED = ["int8", "int4"]

# What `merino-edge search` picks (seed 0): with no budget flag (--flops 60G) and with --params 50M.
ARCHS = {
    "search-default-60GFLOPs": ArchSpec(blocks=(Block(64, 1.0, 1), Block(128, 1.0, 4), Block(128, 1.5, 4), Block(128, 1.0, 4))),
    "search-params-50M": ArchSpec(blocks=(Block(640, 1.0, 4), Block(1024, 1.0, 4), Block(1024, 1.0, 4), Block(1024, 1.0, 4))),
}


def decode_bytes_per_token(graph: Path) -> int:
    """Weight bytes one decode step reads: every initializer a node reads, each time it runs; a lookup reads one row."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    sizes = {}
    for t in model.graph.initializer:
        external = {e.key: e.value for e in t.external_data}
        sizes[t.name] = (int(external["length"]) if "length" in external else len(t.raw_data), list(t.dims))
    total = 0
    for node in model.graph.node:
        for name in node.input:
            if name in sizes:
                size, dims = sizes[name]
                if node.op_type in ("Gather", "GatherBlockQuantized"):
                    attr = "gather_axis" if node.op_type == "GatherBlockQuantized" else "axis"
                    size //= dims[next((a.i for a in node.attribute if a.name == attr), 0)]
                total += size
    return total


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
    """A random-init checkpoint of `arch` and its fp32 + int8 + int4 bundle (reused when already there)."""
    import torch

    from merino_edge.export.package import export_bundle
    from merino_edge.model import MeRinoConfig, MeRinoForCausalLM
    from merino_edge.training.builtin_corpus import builtin_documents
    from merino_edge.training.checkpoint import save_model_dir

    ckpt, bundle = work / name / "ckpt", work / name / "bundle"
    if not (ckpt / "config.json").is_file():
        torch.manual_seed(0)
        save_model_dir(MeRinoForCausalLM(MeRinoConfig.from_arch(arch)).eval(), tokenizer, ckpt)
    held_out = work / "held_out.txt"
    if not held_out.is_file():
        held_out.write_text("\n\n".join(d["text"] for d in builtin_documents() if d["source"].startswith("stdlib/")), encoding="utf-8")
    if not (bundle / "manifest.json").is_file():
        export_bundle(ckpt, bundle, quantize=QUANTIZED, held_out=held_out_tokens(ckpt, held_out), overwrite=True)
    return ckpt, bundle


def held_out_tokens(ckpt: Path, data: Path) -> tuple:
    from merino_edge.export.quality import EVAL_SEQ_LEN, EVAL_TOKENS
    from merino_edge.tokenizer import Tokenizer
    from merino_edge.training.data import held_out_windows

    return held_out_windows(ckpt, Tokenizer(ckpt / "tokenizer.model"), [str(data)], seq_len=EVAL_SEQ_LEN, tokens=EVAL_TOKENS)


def trained_quality(ckpt: Path, data: Path, work: Path) -> dict:
    """Held-out perplexity of the trained checkpoint's int8 and int4 graphs against fp32 (from the export's own measurement)."""
    from merino_edge.bundle import Bundle
    from merino_edge.export.package import export_bundle

    out = work / "trained-bundle"
    if not (out / "manifest.json").is_file():
        export_bundle(ckpt, out, quantize=QUANTIZED, held_out=held_out_tokens(ckpt, data), overwrite=True)
    bundle = Bundle.load(out)
    return {"checkpoint": str(ckpt), "arch_short": bundle.arch.short(), **{p: bundle.manifest.graphs[p]["quality"] for p in QUANTIZED}}


# ------------------------------------------------------------------ measuring


def run_merino(bundle: Path, precision: str, context: int, threads: int, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "merino_edge.cli", "bench", str(bundle), "--backend", "ort", "--precision", precision, "--threads", str(threads)]
    cmd += ["--prompt-tokens", str(context), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_transformers(ckpt: Path, context: int, threads: int, args, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--transformers-worker", str(ckpt), "--threads", str(threads), "--json", str(out)]
    cmd += ["--contexts", str(context), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
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
    ids = torch.tensor([bench_prompt(Tokenizer(ckpt / "tokenizer.model"), args.contexts[0])])

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
        "prefill_tokens_per_s": args.contexts[0] / ttft,
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
    head = (
        f"{'arch':<26}{'runtime':<30}{'context':>8}{'decode tok/s':>13}{'TTFT ms':>9}{'peak RSS MiB':>13}{'RSS/(W+KV)':>11}"
        f"{'weights MiB':>12}{'MB/token':>9}{'of BW bound':>12}{'ppl delta':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        delta = "" if r["perplexity_increase"] is None else f"{r['perplexity_increase']:+.2%}"
        lines.append(
            f"{r['arch']:<26}{r['runtime']:<30}{r['context']:>8}{r['decode_tokens_per_s']:>13.1f}{r['ttft_s'] * 1000:>9.1f}"
            f"{r['peak_rss_bytes'] / 2**20:>13.0f}{r['rss_over_weights_and_kv']:>11.2f}{r['weight_file_bytes'] / 2**20:>12.1f}"
            f"{r['decode_bytes_per_token'] / 1e6:>9.1f}{r['bandwidth_fraction']:>11.0%}{delta:>10}"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    """Decode speed-ups over fp32 at the shortest context, and how decode holds up at the longest, per arch and threads."""
    lines = []
    for (arch, threads) in dict.fromkeys((r["arch"], r["threads"]) for r in rows):
        mine = {(r["precision"], r["context"]): r["decode_tokens_per_s"] for r in rows if (r["arch"], r["threads"]) == (arch, threads)}
        contexts = sorted({c for _, c in mine})
        short, long = contexts[0], contexts[-1]
        ups = ", ".join(f"{p} {mine[p, short] / mine['fp32', short]:.2f}x" for p in QUANTIZED if (p, short) in mine)
        holds = ", ".join(f"{p} {mine[p, long] / mine[p, short]:.0%}" for p in ("fp32", *QUANTIZED) if (p, long) in mine)
        vs_tf = mine["fp32", short] / mine["transformers", short]
        lines.append(
            f"{arch} @ {threads} threads: decode over fp32 at context {short}: {ups}; fp32 over transformers {vs_tf:.2f}x;"
            f" decode at context {long} / at {short}: {holds}"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="arch.json to benchmark (repeatable; default: the two search picks)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts to compare at (default: 2)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[32, 512, 1500], help="prompt lengths decode starts from (default: 32 512 1500)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", *QUANTIZED], choices=["fp32", *QUANTIZED], help="merino-edge graphs to time (default: all)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trained", type=Path, help="a trained checkpoint whose quantized graphs' perplexity to measure (e.g. train_cpu.py's)")
    parser.add_argument("--trained-data", type=Path, help="its held-out data: the token shard dir it was trained on")
    parser.add_argument("--workdir", help="keep checkpoints and bundles here (default: a temp dir)")
    parser.add_argument("--json", default=str(RESULTS))
    parser.add_argument("--transformers-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.transformers_worker:
        transformers_worker(args)
        return 0

    from merino_edge.bundle import Bundle

    archs = {Path(a).stem: load_arch(a) for a in args.arch} if args.arch else ARCHS
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()  # other work on the machine skews every figure: say how much there was
    quality = trained_quality(args.trained, args.trained_data, work) if args.trained else None
    tokenizer = build_tokenizer(work / "tokenizer.model")
    rows = []
    for name, arch in archs.items():
        ckpt, bundle_dir = build_bundle(name, arch, tokenizer, work)
        graphs = Bundle.load(bundle_dir).manifest.graphs
        weights = {p: (bundle_dir / graphs[p]["data_file"]).stat().st_size for p in ("fp32", *QUANTIZED)}
        traffic = {p: decode_bytes_per_token(bundle_dir / graphs[p]["file"]) for p in ("fp32", *QUANTIZED)}
        for threads in args.threads:
            bandwidth = copy_bandwidth(threads)  # measured right before: the load on a shared machine drifts
            for context in args.contexts:
                runs = [(p, f"merino-edge ORT ({p})", run_merino(bundle_dir, p, context, threads, args, work / name / f"{p}-{context}-{threads}.json")) for p in args.precisions]
                runs.append(("transformers", "transformers generate() (fp32)", run_transformers(ckpt, context, threads, args, work / name / f"tf-{context}-{threads}.json")))
                for precision, runtime, result in runs:
                    graph = "fp32" if precision == "transformers" else precision
                    kv_bytes = np.dtype(graphs[graph]["io_dtype"]["kv"]).itemsize
                    kv = arch.kv_cache_bytes_per_token(kv_bytes) * (context + args.new_tokens)
                    rows.append(
                        {
                            "arch": name, "arch_short": arch.short(), "params": arch.params(), "executed_params": arch.executed_params(),
                            "runtime": runtime, "precision": precision, "threads": threads, "context": context,
                            "weight_file_bytes": weights[graph], "kv_cache_bytes": kv,
                            "rss_over_weights_and_kv": result["peak_rss_bytes"] / (weights[graph] + kv),
                            "decode_bytes_per_token": traffic[graph], "copy_bandwidth_bytes_per_s": bandwidth,
                            "bandwidth_bound_tokens_per_s": bandwidth / traffic[graph],
                            "bandwidth_fraction": result["decode_tokens_per_s"] * traffic[graph] / bandwidth,
                            "perplexity_increase": graphs[graph]["quality"]["increase"] if "quality" in graphs[graph] else None,
                            **{k: result[k] for k in ("decode_tokens_per_s", "ttft_s", "prefill_tokens_per_s", "peak_rss_bytes", "runs")},
                        }
                    )  # fmt: skip
                    print(f"{name} @ {threads} threads, context {context}: {runtime} {result['decode_tokens_per_s']:.1f} tok/s", file=sys.stderr)
    print(table(rows))
    print("\n".join(summary(rows)))
    if quality:
        print(f"trained checkpoint {quality['arch_short']}: held-out perplexity fp32 {quality['int8']['fp32_perplexity']:.3f}, " + ", ".join(
            f"{p} {quality[p]['perplexity']:.3f} ({quality[p]['increase']:+.2%}, bound {quality[p]['max_increase']:.0%})" for p in QUANTIZED
        ) + f" on {quality['int8']['tokens']:,} tokens")  # fmt: skip
    record = {
        "schema_version": 2,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "load_average_at_start": load_at_start,
                    "load_average_at_end": os.getloadavg()},
        "versions": merino_edge_versions(),
        "settings": {"batch": 1, "threads": args.threads, "contexts": args.contexts, "new_tokens": args.new_tokens, "repeats": args.repeats},
        "rows": rows,
        "summary": summary(rows),
        "trained_quality": quality,
    }  # fmt: skip
    write_json_atomic(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
