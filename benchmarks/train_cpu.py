"""Train a small MeRino on CPU for a few minutes.

Does the trainer learn?  The bar is the corpus's unigram entropy with the same
tokenizer (nats/token): a model that only learned token frequencies would sit
there; anything that uses context falls well below it.

    nice python benchmarks/train_cpu.py [--data corpus.jsonl.gz ...] [--minutes 4] [--threads 1]

Prints a table and writes benchmarks/results/train_cpu.json (+ the loss curve
as train_cpu.png).  Trains on the given text files (the README's figures are
for the Linux kernel documentation), by default on the built-in corpus that
ships with Python (what the quickstart trains on).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from merino_edge.arch import ArchSpec, Block  # noqa: E402
from merino_edge.fileio import write_json_atomic  # noqa: E402
from merino_edge.host import cpu_model  # noqa: E402
from merino_edge.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from merino_edge.training.builtin_corpus import write_builtin_corpus  # noqa: E402
from merino_edge.training.data import Corpus, TokenShards, prepare_shards  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# Small enough for a few hundred steps in minutes on 2 shared cores: steps, not tokens, are what a short run lacks.
ARCH = ArchSpec(blocks=(Block(64, 2.0, 2), Block(128, 2.0, 2)), vocab_size=1024, proj_dim=128, max_positions=256)


def unigram(shards: TokenShards, vocab: int) -> dict:
    """Entropy of the train split's token frequencies, and their (add-one) cross-entropy on the val split."""
    counts = np.zeros(vocab, dtype=np.float64)
    train = shards.stream("train")
    for start in range(0, len(train), 1 << 22):
        counts += np.bincount(train.read(start, min(1 << 22, len(train) - start)), minlength=vocab)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    smoothed = (counts + 1) / (counts.sum() + vocab)
    val = shards.stream("val").read(0, len(shards.stream("val")))
    return {"entropy_train": entropy, "cross_entropy_val": float(-np.log(smoothed[val]).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=None, help="text files (.txt, .jsonl[.gz]); default: the built-in corpus")
    parser.add_argument("--minutes", type=float, default=4.0, help="training time (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=4e-3, help="peak lr; a short run of a tiny model takes more than the paper's 6e-4")
    parser.add_argument("--work", type=Path, default=None, help="keep tokenizer, shards and checkpoint here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_cpu.json")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.data or () if not p.is_file()]
    if missing:
        print(f"train_cpu: not found: {', '.join(missing)}", file=sys.stderr)
        return 2

    import torch

    from merino_edge.training.trainer import TrainConfig, train

    work = args.work or Path(tempfile.mkdtemp(prefix="train_cpu-"))
    files = args.data or [write_builtin_corpus(work / "builtin.jsonl.gz")]
    corpus = Corpus(tuple(str(p) for p in files))
    started = time.perf_counter()
    tokenizer = Tokenizer(train_tokenizer(corpus, work / "data" / "tokenizer.model", vocab_size=ARCH.vocab_size))
    prepare_shards(corpus, tokenizer, work / "data", val_fraction=0.02)
    shards = TokenShards.open(work / "data")
    prep_s = time.perf_counter() - started
    base = unigram(shards, ARCH.vocab_size)

    def config(out: Path, steps: int, **kw) -> TrainConfig:
        return TrainConfig(
            arch=ARCH, data=(str(work / "data"),), out=out, seq_len=args.seq_len, batch_tokens=args.batch_tokens, micro_batch=32,
            max_steps=steps, lr=args.lr, min_lr=args.lr / 10, threads=args.threads, **kw,
        )  # fmt: skip

    # a few steps to measure the speed, then as many steps as fit in --minutes
    calibration = train(config(work / "calibration", 6, eval_every=10**6, eval_tokens=args.seq_len, save_every=10**6, progress=False))
    shutil.rmtree(work / "calibration")
    steps = max(10, int(args.minutes * 60 * calibration.tokens_per_s / args.batch_tokens))
    result = train(config(work / "run", steps, eval_every=max(1, steps // 10), eval_tokens=16384, save_every=max(1, steps // 4), log_every=5))

    val_curve = [{"tokens": r["tokens"], "val_loss": r["val_loss"]} for r in result.history if "val_loss" in r]
    record = {
        "machine": {"cpu": cpu_model(), "threads": torch.get_num_threads() if args.threads is None else args.threads,
                    "torch": torch.__version__},
        "arch": ARCH.to_json(),
        "arch_short": ARCH.short(),
        "params": ARCH.params(),
        "corpus": {"files": [p.name for p in files], **{k: {"documents": v.documents, "tokens": v.tokens} for k, v in shards.manifest.splits.items()}},
        "settings": {"seq_len": args.seq_len, "batch_tokens": args.batch_tokens, "steps": steps, "lr": args.lr, "warmup": config(work, steps).warmup_steps()},
        "prepare_s": prep_s,
        "train_wall_s": result.elapsed_s,
        "tokens_per_s": result.tokens_per_s,
        "tokens": result.tokens,
        "unigram_entropy_nats": base["entropy_train"],
        "unigram_cross_entropy_val_nats": base["cross_entropy_val"],
        "val_loss_initial": val_curve[0]["val_loss"],
        "val_loss_final": result.val_loss,
        "val_perplexity_final": result.val_perplexity,
        "train_loss_final": result.train_loss,
        "val_curve": val_curve,
    }  # fmt: skip
    write_json_atomic(args.out, record)
    shutil.copyfile(work / "run" / "trainer_state" / "loss.png", args.out.with_suffix(".png"))

    rows = [
        ("model", f"{ARCH.short()}  ({ARCH.params() / 1e6:.2f} M params, vocab {ARCH.vocab_size})"),
        ("corpus (train / val tokens)", f"{shards.manifest.splits['train'].tokens:,} / {shards.manifest.splits['val'].tokens:,}"),
        ("steps x batch tokens", f"{steps} x {args.batch_tokens} = {result.tokens:,} tokens"),
        ("training wall time", f"{result.elapsed_s / 60:.1f} min ({result.tokens_per_s:,.0f} tokens/s)"),
        ("unigram entropy (train)", f"{base['entropy_train']:.3f} nats/token"),
        ("unigram cross-entropy (val)", f"{base['cross_entropy_val']:.3f} nats/token"),
        ("val loss at step 0", f"{val_curve[0]['val_loss']:.3f} nats/token"),
        ("val loss final", f"{result.val_loss:.3f} nats/token (perplexity {result.val_perplexity:.1f})"),
        ("below unigram entropy by", f"{base['entropy_train'] - result.val_loss:.3f} nats/token ({math.exp(base['entropy_train'] - result.val_loss):.2f}x perplexity)"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
