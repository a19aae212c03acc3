"""Pre-training a MeRino model: `train(TrainConfig) -> TrainResult`.

Settings follow Sec. 4.1 of the paper: AdamW (beta 0.9/0.95, weight decay 0.1
on matrices and embeddings), lr 6e-4 with linear warm-up then linear decay,
gradient clipping, gradient accumulation to an effective batch in tokens, and
AMP (bf16 autocast on CUDA; fp32 on CPU).  The paper's run is
`--seq-len 1024 --batch-tokens 524288 --warmup 1000 --max-steps 600000`.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the same
code runs DistributedDataParallel, gloo on CPU and nccl on CUDA; every rank
takes its slice of the same global batch, so the loss curve does not depend
on the number of ranks.  SIGTERM / SIGINT finish the current step, write a
checkpoint and return; `resume=True` continues from the last checkpoint on
the same loss curve.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from merino_edge.arch import ArchSpec, load_arch
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.token_shards import MANIFEST
from merino_edge.tokenizer import FILE_NAME as TOKENIZER_FILE
from merino_edge.tokenizer import Tokenizer, train_tokenizer
from merino_edge.training import checkpoint
from merino_edge.training.config import TrainConfig, TrainResult, lr_at
from merino_edge.training.data import DATA_DIR, BatchSampler, Corpus, TokenShards, prepare_shards, validation_windows

LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"


# ------------------------------------------------------------- environment


@dataclass
class _Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        return self.sum([value])[0] / self.world_size

    def sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def _setup_dist(device: str) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("train: --device cuda asked for, but torch sees no CUDA GPU")
        torch_device = torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
        torch.cuda.set_device(torch_device)
    elif device == "cpu":
        torch_device = torch.device("cpu")
    else:
        raise InputError(f"train: unknown device {device!r} (auto, cpu, cuda or cuda:N)")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return _Dist(rank, world_size, local_rank, torch_device)


class _StopFlag:
    """Set by SIGTERM / SIGINT; the loop stops after the current step (a second signal stops at once)."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised is not None:
            raise KeyboardInterrupt
        self.raised = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------- setup


def _resolve_arch(arch: str | Path | ArchSpec) -> ArchSpec:
    return arch if isinstance(arch, ArchSpec) else load_arch(arch)


def _prepare_tokenizer(cfg: TrainConfig, arch: ArchSpec, out: Path, env: _Dist, corpus: Corpus | None, shard_dir: Path | None) -> Tokenizer:
    """The given tokenizer, the run's own (on resume), the shard dir's, or one trained now."""
    own = out / TOKENIZER_FILE
    if cfg.tokenizer is not None:
        path = Path(cfg.tokenizer)
    elif cfg.resume and own.is_file():
        path = own
    elif shard_dir is not None and (shard_dir / TOKENIZER_FILE).is_file():
        path = shard_dir / TOKENIZER_FILE
    elif corpus is not None:
        path = own
        if env.main:
            train_tokenizer(corpus, path, vocab_size=arch.vocab_size, seed=cfg.seed)
        env.barrier()
    else:
        raise InputError(f"train: the prepared shards in {shard_dir} have no {TOKENIZER_FILE}; give --tokenizer")
    tokenizer = Tokenizer(path)
    if tokenizer.vocab_size != arch.vocab_size:
        raise IncompatibleError(
            f"train: the tokenizer {path} has {tokenizer.vocab_size} pieces but the arch has vocab_size {arch.vocab_size}; "
            "train a tokenizer of that size or change vocab_size in the arch"
        )
    return tokenizer


def _prepare_data(cfg: TrainConfig, out: Path, env: _Dist) -> tuple[Corpus | None, Path]:
    """(corpus to tokenize or None, shard directory)."""
    if len(cfg.data) == 1 and (Path(cfg.data[0]) / MANIFEST).is_file():
        return None, Path(cfg.data[0])
    return Corpus(tuple(cfg.data), cfg.text_unit), Path(cfg.shards_dir) if cfg.shards_dir else out / DATA_DIR


def _open_shards(corpus: Corpus | None, shard_dir: Path, tokenizer: Tokenizer, cfg: TrainConfig, env: _Dist) -> TokenShards:
    if corpus is not None:
        reuse = (shard_dir / MANIFEST).is_file() and TokenShards.open(shard_dir).manifest.matches(corpus, tokenizer, cfg.val_fraction, cfg.seed)
        if env.main and not reuse:
            prepare_shards(corpus, tokenizer, shard_dir, val_fraction=cfg.val_fraction, seed=cfg.seed, progress=cfg.progress)
        env.barrier()
    shards = TokenShards.open(shard_dir)
    shards.check_tokenizer(tokenizer)
    return shards


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not on biases or LayerNorms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _loss(model, windows: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


@torch.no_grad()
def _evaluate(model, windows: np.ndarray, cfg: TrainConfig, env: _Dist) -> tuple[float, float]:
    """(validation loss in nats/token, perplexity) over every rank's windows."""
    model.eval()
    total = count = 0.0
    for i in range(0, len(windows), cfg.micro_batch):
        batch = torch.from_numpy(windows[i : i + cfg.micro_batch]).to(env.device)
        with _autocast(cfg, env.device):
            total += float(_loss(model, batch, reduction="sum"))
        count += batch[:, 1:].numel()
    model.train()
    total, count = env.sum([total, count])
    loss = total / count
    return loss, math.exp(min(loss, 50.0))


class _Log:
    """The JSONL log of a run (rank 0 writes); on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict] = []
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.is_file():
            kept = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("step", 0) <= resume_step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)
            self.records = kept
        elif path.is_file():
            path.unlink()

    def write(self, record: dict) -> None:
        if self.enabled:
            self.records.append(record)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def plot_log(records: list[dict], out_path: Path) -> Path:
    """Training and validation loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style, label in (("loss", "-", "train"), ("val_loss", "o-", "validation")):
        points = [(r["tokens"], r[key]) for r in records if key in r]
        if points:
            ax.plot([t for t, _ in points], [v for _, v in points], style, lw=0.8, label=label)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


# --------------------------------------------------------------------- run


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) the run described by `cfg`; the output dir is a `transformers` checkpoint."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg.check()
    arch = _resolve_arch(cfg.arch)
    if cfg.seq_len > arch.max_positions:
        raise InputError(f"train: seq_len {cfg.seq_len} is longer than the arch's max_positions {arch.max_positions}")
    out = Path(cfg.out)
    if checkpoint.has_checkpoint(out) and not cfg.resume:
        raise InputError(f"train: {out} already holds a training run; pass --resume to continue it or choose another --out")
    state = checkpoint.load_state(out) if cfg.resume else None
    if state is not None and ArchSpec.from_json(state["arch"]) != arch:
        old = ArchSpec.from_json(state["arch"])
        raise IncompatibleError(f"train: {out} holds a checkpoint of another arch ({old.short()}), not {arch.short()}")

    env = _setup_dist(cfg.device)
    if state is not None and env.main:
        checkpoint.remove_stale_temporaries(out)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, arch, out, state, env)
    finally:
        torch.set_num_threads(threads)
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: TrainConfig, arch: ArchSpec, out: Path, state: dict | None, env: _Dist) -> TrainResult:
    from tqdm import tqdm

    from merino_edge.model import MeRinoConfig, MeRinoForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    corpus, shard_dir = _prepare_data(cfg, out, env)
    tokenizer = _prepare_tokenizer(cfg, arch, out, env, corpus, shard_dir)
    if state is not None and state["tokenizer_sha256"] != tokenizer.sha256:
        raise IncompatibleError(f"train: the checkpoint in {out} was trained with another tokenizer")
    shards = _open_shards(corpus, shard_dir, tokenizer, cfg, env)
    batch_seqs = cfg.batch_tokens // cfg.seq_len
    sampler = BatchSampler(shards.stream("train"), cfg.seq_len, batch_seqs, cfg.micro_batch, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    val_stream = shards.stream("val")
    evaluate = len(val_stream) > 0
    if evaluate and len(val_stream) < cfg.seq_len + 1:
        raise InputError(f"train: the validation split has {len(val_stream)} tokens, fewer than one sequence of {cfg.seq_len + 1}")
    val_windows = validation_windows(val_stream, cfg.seq_len, cfg.eval_tokens, rank=env.rank, world_size=env.world_size)

    torch.manual_seed(cfg.seed)
    model = MeRinoForCausalLM(MeRinoConfig.from_arch(arch)).to(env.device)
    optimizer = _optimizer(model, cfg, env.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg) / cfg.lr)
    step = tokens = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["data"])
        checkpoint.set_rng_state(state["rng"][min(env.rank, len(state["rng"]) - 1)])
        step, tokens = state["step"], state["tokens"]

    ddp = None
    if env.world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    train_model = ddp if ddp is not None else model
    if cfg.compile:
        train_model = torch.compile(train_model)
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    log = _Log(out / checkpoint.STATE_DIR / LOG_FILE, env.main, step if state is not None else None)

    def save() -> None:
        rngs = [checkpoint.rng_state()]
        if env.world_size > 1:
            rngs = [None] * env.world_size
            dist.all_gather_object(rngs, checkpoint.rng_state())
        if env.main:
            checkpoint.save_model_dir(model, tokenizer.path, out)
            checkpoint.save_state(
                out,
                {
                    "step": step,
                    "tokens": tokens,
                    "arch": arch.to_json(),
                    "tokenizer_sha256": tokenizer.sha256,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "data": sampler.state_dict(),
                    "rng": rngs,
                    "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                },
            )
        env.barrier()

    total = cfg.total_steps()
    accumulation = sampler.accumulation_steps
    bar = tqdm(total=total, initial=step, unit="step", desc="training", disable=not (cfg.progress and env.main), dynamic_ncols=True)
    started = time.perf_counter()
    start_tokens = tokens
    train_s = 0.0  # time in training steps only: tokens/s leaves out validation and checkpoints
    train_loss = val_loss = val_ppl = None
    if evaluate and state is None:
        val_loss, val_ppl = _evaluate(model, val_windows, cfg, env)
        log.write({"step": 0, "tokens": 0, "val_loss": val_loss, "val_perplexity": val_ppl})
    interrupted = False
    with _StopFlag() as stop:
        while step < total:
            if env.sum([1.0 if stop.raised else 0.0])[0] > 0:
                interrupted = True
                break
            step_started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss_sum = torch.zeros((), device=env.device)
            for i, micro in enumerate(sampler.next_batch()):
                sync = ddp is None or i == accumulation - 1
                with contextlib.nullcontext() if sync else ddp.no_sync(), _autocast(cfg, env.device):
                    loss = _loss(train_model, torch.from_numpy(micro).to(env.device)) / accumulation
                loss.backward()
                loss_sum += loss.detach()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += cfg.batch_tokens
            train_loss = env.mean(float(loss_sum))
            train_s += time.perf_counter() - step_started
            speed = (tokens - start_tokens) / max(train_s, 1e-9)
            elapsed = time.perf_counter() - started
            record = {"step": step, "tokens": tokens, "loss": train_loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": speed, "train_s": train_s, "elapsed_s": elapsed}
            if evaluate and (step % cfg.eval_every == 0 or step == total):
                val_loss, val_ppl = _evaluate(model, val_windows, cfg, env)
                record.update(val_loss=val_loss, val_perplexity=val_ppl)
            if step % cfg.log_every == 0 or "val_loss" in record or step == total:
                log.write(record)
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}", refresh=False)
            bar.update(1)
            if step % cfg.save_every == 0 and step < total:
                save()
    bar.close()
    save()
    elapsed = time.perf_counter() - started
    if env.main and log.records:
        plot_log(log.records, out / checkpoint.STATE_DIR / PLOT_FILE)
    return TrainResult(
        out_dir=str(out),
        steps=step,
        tokens=tokens,
        train_loss=train_loss,
        val_loss=val_loss,
        val_perplexity=val_ppl,
        elapsed_s=elapsed,
        tokens_per_s=(tokens - start_tokens) / max(train_s, 1e-9),
        interrupted=interrupted,
        world_size=env.world_size,
        history=log.records,
    )
