"""The settings of a training run and what it returns (torch-free, so the CLI can read the defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from merino_edge.arch import ArchSpec
from merino_edge.errors import InputError


@dataclass
class TrainConfig:
    """Everything a run needs.

    The defaults are a short run; Sec. 4.1 of the paper is seq_len=1024,
    batch_tokens=524288 (512 sequences), warmup=1000, max_steps=600000, with
    the default lr, betas and weight decay.
    """

    arch: str | Path | ArchSpec
    data: tuple[str, ...]
    out: str | Path
    tokenizer: str | Path | None = None  # trained on the fly from `data` when None
    text_unit: str = "file"
    val_fraction: float = 0.02
    shards_dir: str | Path | None = None  # default: <out>/data
    seq_len: int = 512
    batch_tokens: int = 32768  # effective (global) batch per optimizer step
    micro_batch: int = 8  # sequences per forward/backward on one rank
    max_steps: int | None = None
    max_tokens: int | None = None
    lr: float = 6e-4
    min_lr: float = 0.0
    warmup: int | None = None  # default: min(1000, 10% of the steps)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    log_every: int = 10
    eval_tokens: int = 65536
    save_every: int = 500
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    amp: bool = True
    compile: bool = False
    resume: bool = False
    progress: bool = True

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if self.max_tokens is not None:
            return math.ceil(self.max_tokens / self.batch_tokens)
        return 1000

    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else min(1000, self.total_steps() // 10)

    def check(self) -> None:
        for name in ("seq_len", "batch_tokens", "micro_batch", "eval_every", "log_every", "save_every", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise InputError(f"train: {name} must be positive, got {getattr(self, name)}")
        if self.batch_tokens % self.seq_len:
            raise InputError(f"train: batch_tokens {self.batch_tokens} is not a multiple of seq_len {self.seq_len}")
        if self.total_steps() <= 0:
            raise InputError("train: the run has no steps (max_steps / max_tokens must be positive)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise InputError(f"train: need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})")


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    val_perplexity: float | None
    elapsed_s: float  # wall time of this session's loop, validation and checkpoints included
    tokens_per_s: float  # training steps only
    interrupted: bool = False
    world_size: int = 1
    history: list[dict] = field(default_factory=list, repr=False)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then linear decay to `min_lr` at the last step."""
    total, warmup = cfg.total_steps(), cfg.warmup_steps()
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * max(0.0, 1.0 - progress)
