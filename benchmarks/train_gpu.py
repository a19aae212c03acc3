"""Search a ~60M-parameter MeRino and train it for ~10 minutes on one CUDA GPU (an H100-class run).

    python benchmarks/train_gpu.py --data linux-docs.jsonl.gz python-docs.jsonl.gz [--params 60M] [--minutes 10]

1. `run_search` (the library call behind `merino-edge search`) picks the
   max-entropy architecture with at most --params unique parameters;
2. a 32k SentencePiece tokenizer and token shards are built from
   the --data files (the figures in the docs: the Linux and Python documentation);
3. a short calibration run (same settings, torch.compile included) measures the
   steady-state speed, which sets the number of steps that fit in --minutes;
4. the run itself: bf16 autocast, AdamW, warm-up + linear decay.

Reports tokens/s, model FLOPs utilisation (3 x forward FLOPs per token from
`ArchSpec.flops`, over the GPU's dense bf16 peak) and the validation-loss
curve; writes benchmarks/results/train_gpu.json and train_gpu.png.  The Linux and
Python docs are ~8M tokens, so a 10-minute run makes many passes over it: the curve
shows where validation loss stops following training loss.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from merino_edge.fileio import write_json_atomic  # noqa: E402
from merino_edge.units import parse_count  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def steady_tokens_per_s(history: list[dict]) -> float:
    """Tokens/s over the second half of a run's records (after compilation and warm-up)."""
    steps = [r for r in history if "train_s" in r]
    first, last = steps[len(steps) // 2], steps[-1]
    return (last["tokens"] - first["tokens"]) / max(last["train_s"] - first["train_s"], 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="training text files (.txt, .jsonl[.gz])")
    parser.add_argument("--params", default="60M", help="unique-parameter budget of the search (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=131072, help="effective batch (default: 128 x 1024)")
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: looked up by name)")
    parser.add_argument("--work", type=Path, default=None, help="keep tokenizer, shards and checkpoints here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_gpu.json")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("train_gpu: needs a CUDA GPU, and torch sees none (this benchmark is for an H100-class machine)", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.data if not p.is_file()]
    if missing:
        print(f"train_gpu: corpus not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(gpu)
    if peak is None:
        print(f"train_gpu: no known bf16 peak for {gpu!r}; pass --peak-tflops", file=sys.stderr)
        return 2

    from merino_edge.search.budgets import Budget
    from merino_edge.search.run import run_search
    from merino_edge.tokenizer import Tokenizer, train_tokenizer
    from merino_edge.training.data import Corpus, prepare_shards
    from merino_edge.training.trainer import TrainConfig, train

    work = args.work or Path(tempfile.mkdtemp(prefix="train_gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    search = run_search(Budget(params=parse_count(args.params, "--params")), progress=False)
    search.save(work / "arch.json")
    arch = search.arch
    corpus = Corpus(tuple(str(p) for p in args.data))
    tokenizer = Tokenizer(train_tokenizer(corpus, work / "data" / "tokenizer.model", vocab_size=arch.vocab_size))
    manifest = prepare_shards(corpus, tokenizer, work / "data", val_fraction=0.02)
    prep_s = time.perf_counter() - started

    def config(out: Path, steps: int, **kw) -> TrainConfig:
        return TrainConfig(
            arch=work / "arch.json", data=(str(work / "data"),), out=out, seq_len=args.seq_len, batch_tokens=args.batch_tokens,
            micro_batch=args.micro_batch, max_steps=steps, lr=args.lr, compile=args.compile, device="cuda", **kw,
        )  # fmt: skip

    calibration = train(config(work / "calibration", 30, eval_every=10**6, eval_tokens=args.seq_len, save_every=10**6, log_every=1, progress=False))
    shutil.rmtree(work / "calibration")
    speed = steady_tokens_per_s(calibration.history)
    steps = max(50, int(args.minutes * 60 * speed / args.batch_tokens))
    torch.cuda.reset_peak_memory_stats()
    result = train(config(work / "run", steps, eval_every=max(1, steps // 20), eval_tokens=262144, save_every=max(1, steps // 2), log_every=10))

    flops = arch.flops(args.seq_len)
    train_flops_per_token = 3 * flops.total / args.seq_len
    steady = steady_tokens_per_s(result.history)
    mfu = steady * train_flops_per_token / (peak * 1e12)
    val_curve = [{"step": r["step"], "tokens": r["tokens"], "val_loss": r["val_loss"]} for r in result.history if "val_loss" in r]
    record = {
        "machine": {"gpu": gpu, "peak_bf16_tflops": peak, "torch": torch.__version__, "cuda": torch.version.cuda},
        "arch": arch.to_json(),
        "arch_short": arch.short(),
        "params": arch.params(),
        "executed_params": arch.executed_params(),
        "forward_flops_per_token": flops.total / args.seq_len,
        "search_score": search.score,
        "corpus": {k: {"documents": v.documents, "tokens": v.tokens} for k, v in manifest.splits.items()},
        "settings": {"seq_len": args.seq_len, "batch_tokens": args.batch_tokens, "micro_batch": args.micro_batch, "steps": steps,
                     "lr": args.lr, "warmup": config(work, steps).warmup_steps(), "compile": args.compile, "amp": "bf16"},
        "prepare_s": prep_s,
        "train_wall_s": result.elapsed_s,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens_per_s,
        "tokens_per_s_steady": steady,
        "mfu": mfu,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "val_loss_final": result.val_loss,
        "val_perplexity_final": result.val_perplexity,
        "val_curve": val_curve,
    }  # fmt: skip
    write_json_atomic(args.out, record)
    shutil.copyfile(work / "run" / "trainer_state" / "loss.png", args.out.with_suffix(".png"))

    print(f"{'model':<24}{arch.short()}  ({arch.params() / 1e6:.1f} M unique / {arch.executed_params() / 1e6:.1f} M executed params)")
    print(f"{'GPU':<24}{gpu} (bf16 peak {peak:.0f} TFLOPS)")
    print(f"{'steps x batch tokens':<24}{steps} x {args.batch_tokens} = {result.tokens:,} tokens in {result.elapsed_s / 60:.1f} min")
    print(f"{'tokens/s (steady)':<24}{steady:,.0f}")
    print(f"{'MFU':<24}{100 * mfu:.1f} %  ({train_flops_per_token / 1e9:.2f} GFLOP per training token)")
    print(f"\n{'step':>8} {'tokens':>14} {'val loss':>9}")
    for r in val_curve:
        print(f"{r['step']:>8} {r['tokens']:>14,} {r['val_loss']:>9.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
