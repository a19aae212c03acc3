"""`merino-edge bench`: time to first token, prefill and decode speed, peak memory of a bundle.

Batch 1, greedy, eos ignored so that every run decodes exactly `new_tokens`.
The prompt is a fixed English text cut to `prompt_tokens` tokens.  Each
figure is the median over `repeats` runs after `warmup` untimed ones; peak RSS
is the process's high-water mark (so run it in a fresh process, as the CLI does).
"""

from __future__ import annotations

import resource
import statistics
import sys
from dataclasses import asdict, dataclass, field

from merino_edge.errors import InputError
from merino_edge.fileio import check_schema

SCHEMA_VERSION = 1

_PROMPT_TEXT = (
    "The kernel keeps a small amount of state for every open file: its position, "
    "the flags it was opened with and a reference to the inode that describes it. "
)


@dataclass
class BenchResult:
    backend: str
    precision: str
    threads: int | None
    prompt_tokens: int
    new_tokens: int
    repeats: int
    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    total_s: float
    peak_rss_bytes: int
    runs: list[dict] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BenchResult:
        check_schema(data, "bench result", SCHEMA_VERSION)
        return cls(**data)

    def table(self) -> str:
        rows = [
            ("backend", f"{self.backend} ({self.precision}, threads {self.threads or 'default'})"),
            ("prompt / new tokens", f"{self.prompt_tokens} / {self.new_tokens}"),
            ("time to first token", f"{self.ttft_s * 1000:.1f} ms"),
            ("prefill", f"{self.prefill_tokens_per_s:.1f} tokens/s"),
            ("decode", f"{self.decode_tokens_per_s:.1f} tokens/s"),
            ("peak RSS", f"{self.peak_rss_bytes / 2**20:.1f} MiB"),
        ]
        return "\n".join(f"{k:<22}{v}" for k, v in rows)


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux: VmHWM of /proc/self/status (ru_maxrss would carry over the peak of
    the process that exec'd this one).  Elsewhere ru_maxrss (macOS: bytes).
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def bench_prompt(tokenizer, prompt_tokens: int) -> list[int]:
    ids = tokenizer.encode(_PROMPT_TEXT)
    return (ids * (prompt_tokens // len(ids) + 1))[:prompt_tokens]


def bench_bundle(
    bundle,
    *,
    backend: str = "auto",
    prompt_tokens: int = 32,
    new_tokens: int = 128,
    threads: int | None = 2,
    repeats: int = 3,
    warmup: int = 1,
    provider: str | None = None,
    precision: str | None = None,
    progress: bool = True,
) -> BenchResult:
    from tqdm import tqdm

    from merino_edge.runtime.generator import Generator
    from merino_edge.runtime.sampling import SamplingParams

    if prompt_tokens < 1 or new_tokens < 2 or repeats < 1 or warmup < 0:
        raise InputError("bench: needs prompt tokens >= 1, new tokens >= 2, repeats >= 1, warmup >= 0")
    generator = Generator.from_bundle(bundle, backend, threads=threads, provider=provider, precision=precision)
    prompt = bench_prompt(generator.tokenizer, prompt_tokens)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    runs = []
    for i in tqdm(range(warmup + repeats), desc="bench", unit="run", disable=not progress, file=sys.stderr):
        done = generator.generate(prompt, params)
        if i >= warmup:
            t = done.timings
            runs.append({"ttft_s": t.ttft_s, "decode_s": t.decode_s, "total_s": t.total_s, "completion_tokens": done.completion_tokens})
    ttft = statistics.median(r["ttft_s"] for r in runs)
    decode = statistics.median(r["decode_s"] for r in runs)
    backend_used = generator.backend
    return BenchResult(
        backend=backend_used.name,
        precision=backend_used.precision,
        threads=threads,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        repeats=repeats,
        ttft_s=ttft,
        prefill_tokens_per_s=prompt_tokens / ttft,
        decode_tokens_per_s=(new_tokens - 1) / decode,
        total_s=statistics.median(r["total_s"] for r in runs),
        peak_rss_bytes=peak_rss_bytes(),
        runs=runs,
    )
