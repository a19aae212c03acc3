"""`merino-edge quickstart`: the whole pipeline on this machine, in one command.

profile this machine -> search under a latency budget derived from that profile
-> tokenizer + training -> export -> build (where TensorRT is) -> serve on a
Unix socket -> one streamed completion through the socket -> a summary.

Every stage writes its artifact into the work dir and is skipped when that
artifact is already there, so a second run reuses what is done and any stage
can be re-run alone with its own command (the summary prints them).

The quickstart searches a reduced space (narrow widths, a small vocabulary, a
short context) so that training finishes in minutes on a 2-core CPU; the
full Table 5 space is one `merino-edge search` away.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from merino_edge.arch import Axes, load_arch
from merino_edge.errors import InputError, MerinoError
from merino_edge.fileio import write_json_atomic

# The latency budget sits this far between the fastest and the slowest
# architecture of the quickstart space (predicted from the measured profile).
BUDGET_FRACTION = 0.3
# Decode contexts and prompt lengths the quickstart profile times (within its 512 positions).
PROFILE_CONTEXTS = (0, 128, 384)
PROFILE_LENGTHS = (16, 64, 256)


@dataclass
class QuickstartConfig:
    workdir: Path = Path("merino-quickstart")
    data: tuple[str, ...] = ()  # default: the Python docs that ship with this interpreter
    axes: Axes = Axes(widths=(64, 128, 256), ratios=(1.0, 2.0, 4.0), depths=(1, 2))
    blocks: int = 3
    vocab_size: int = 1024
    proj_dim: int = 128  # Table 5's models use 768; at this size the embedding and head would be most of the training time
    max_positions: int = 512
    latency_context: int = 256
    steps: int = 500
    seq_len: int = 128
    batch_tokens: int = 4096
    lr: float = 3e-3  # a model this small trains stably well above the paper's 6e-4, and a few hundred steps need it
    threads: int | None = None
    prompt: str = "The Python interpreter"
    max_tokens: int = 48
    profile_grid: dict | None = field(default=None, repr=False)  # tests pass a smaller grid
    calibration: int = 4  # whole models the profile fits its cache share on (quickstart space: 32 % MAPE without, 4 % with)
    progress: bool = True


def _say(text: str) -> None:
    print(f"\n== {text}", file=sys.stderr, flush=True)


class Quickstart:
    """The stages, each skipped when its artifact exists."""

    def __init__(self, cfg: QuickstartConfig):
        self.cfg = cfg
        self.dir = Path(cfg.workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths = {
            "profile": self.dir / "profile.json",
            "arch": self.dir / "arch.json",
            "corpus": self.dir / "corpus.jsonl.gz",
            "checkpoint": self.dir / "checkpoint",
            "bundle": self.dir / "bundle",
            "socket": self.dir / "api.sock",
            "server log": self.dir / "serve.log",
        }
        self.facts: dict = {}

    # ------------------------------------------------------------ stages

    def profile(self) -> None:
        from merino_edge.profiling.run import QUICK, Grid, ProfileConfig, run_profile

        out = self.paths["profile"]
        if out.exists():
            _say(f"profile: reusing {out}")
            return
        _say(f"profile: timing every (E, R) layer of the quickstart space and {self.cfg.calibration} whole models on ONNX Runtime (CPU)")
        grid = Grid.from_json(self.cfg.profile_grid) if self.cfg.profile_grid else Grid(PROFILE_CONTEXTS, PROFILE_LENGTHS, QUICK.measurement)
        run_profile(
            ProfileConfig(
                out=out, workdir=self.dir / "profile.work", threads=self.cfg.threads, calibration=self.cfg.calibration,
                axes=self.cfg.axes, model=self._model(), grid=grid, progress=self.cfg.progress,
            )
        )  # fmt: skip

    def search(self) -> None:
        import numpy as np

        from merino_edge.search.budgets import Budget
        from merino_edge.search.latency import LatencyModel
        from merino_edge.search.run import run_search
        from merino_edge.search.space import SearchSpace

        out = self.paths["arch"]
        space = SearchSpace(axes=self.cfg.axes, blocks=self.cfg.blocks, **self._model())
        latency = LatencyModel.from_file(self.paths["profile"], axes=space.axes)
        smallest = np.zeros((space.blocks, 3), dtype=np.int64)
        largest = np.tile(np.array(space.shape) - 1, (space.blocks, 1))
        fastest, slowest = (latency.decode_ms(space.to_arch(g), self.cfg.latency_context) for g in (smallest, largest))
        budget_ms = round(fastest + BUDGET_FRACTION * (slowest - fastest), 3)
        self.facts["budget_ms"] = budget_ms
        if out.exists():
            _say(f"search: reusing {out}")
            return
        _say(f"search: max entropy under {budget_ms} ms/token at context {self.cfg.latency_context} (profile range {fastest:.3f}-{slowest:.3f} ms)")
        budget = Budget(latency_ms=budget_ms, latency_context=self.cfg.latency_context)
        result = run_search(budget, space=space, profile=self.paths["profile"], iterations=20_000, progress=self.cfg.progress)
        result.save(out)

    def corpus(self) -> tuple[str, ...]:
        if self.cfg.data:
            return tuple(self.cfg.data)
        from merino_edge.training.builtin_corpus import write_builtin_corpus

        out = self.paths["corpus"]
        if not out.exists():
            _say("data: writing the Python documentation that ships with this interpreter as the training corpus")
            write_builtin_corpus(out)
        return (str(out),)

    def train(self) -> None:
        from merino_edge.training.config import TrainConfig
        from merino_edge.training.trainer import train

        out = self.paths["checkpoint"]
        if (out / "model.safetensors").exists() and (out / "train_result.json").exists():
            _say(f"train: reusing {out}")
            return
        _say(f"train: {self.cfg.steps} steps of {self.cfg.batch_tokens} tokens on CPU")
        cfg = TrainConfig(
            arch=self.paths["arch"],
            data=self.corpus(),
            out=out,
            seq_len=self.cfg.seq_len,
            batch_tokens=self.cfg.batch_tokens,
            micro_batch=self.cfg.batch_tokens // self.cfg.seq_len,
            max_steps=self.cfg.steps,
            lr=self.cfg.lr,
            warmup=max(1, self.cfg.steps // 10),
            eval_every=max(1, self.cfg.steps // 4),
            save_every=max(1, self.cfg.steps // 4),
            eval_tokens=16 * self.cfg.seq_len,
            device="cpu",
            threads=self.cfg.threads,
            resume=(out / "trainer_state").exists(),
            progress=self.cfg.progress,
        )
        result = train(cfg)
        write_json_atomic(out / "train_result.json", {k: getattr(result, k) for k in ("steps", "tokens", "train_loss", "val_loss", "val_perplexity", "elapsed_s", "tokens_per_s")})

    def export(self) -> None:
        from merino_edge.bundle import Bundle
        from merino_edge.export.package import export_bundle

        out = self.paths["bundle"]
        try:
            Bundle.load(out)
            _say(f"export: reusing {out}")
            return
        except MerinoError:
            pass
        _say("export: ONNX graph with a KV cache + tokenizer + manifest")
        # The FP16 graph is what `build` compiles; without TensorRT the FP32 graph alone is served.
        export_bundle(self.paths["checkpoint"], out, fp16=_has_tensorrt(), overwrite=True, progress=self.cfg.progress)

    def build(self) -> None:
        from merino_edge.bundle import Bundle

        if not _has_tensorrt():
            _say("build: skipped (TensorRT is not installed here; ONNX Runtime serves the bundle)")
            self.facts["build"] = "skipped: no TensorRT"
            return
        self.facts["build"] = "TensorRT FP16 engine"
        if Bundle.load(self.paths["bundle"], verify=False).engine_record is not None:
            _say(f"build: reusing the engine in {self.paths['bundle']}")
            return
        from merino_edge.export.tensorrt import build_engine

        _say("build: TensorRT FP16 engine")
        build_engine(self.paths["bundle"])

    def measure(self) -> None:
        """Time the exported model's decode step exactly as `profile validate` does, and its serving speed."""
        from merino_edge.bundle import Bundle
        from merino_edge.profiling.validate import validate_profile
        from merino_edge.profiling.whole_models import WholeModel
        from merino_edge.runtime.bench import bench_bundle

        bundle = Bundle.load(self.paths["bundle"], verify=False)
        _say(f"validate: the latency model's prediction against the whole model at context {self.cfg.latency_context}")
        report = validate_profile(
            self.paths["profile"], [WholeModel(bundle.arch, bundle.onnx_path("fp32"))], self.dir / "validation",
            decode_contexts=(self.cfg.latency_context,), prefill_lengths=(PROFILE_LENGTHS[1],), skip_calibrated=False, progress=self.cfg.progress,
        )  # fmt: skip
        self.facts["decode"] = next(p for p in report.points if p.phase == "decode")
        _say("bench: generation speed with the runtime that serves")
        self.facts["bench"] = bench_bundle(self.paths["bundle"], prompt_tokens=32, new_tokens=64, threads=self.cfg.threads, progress=self.cfg.progress)

    def serve_and_ask(self) -> None:
        sock = self.paths["socket"]
        cmd = [sys.executable, "-m", "merino_edge.cli", "serve", str(self.paths["bundle"]), "--socket", str(sock), "--metrics-addr", "127.0.0.1:0"]
        _say(f"serve: {' '.join(shlex.quote(c) for c in cmd[2:])}")
        # The server's log goes to a file: a pipe nobody reads would block it once full.
        log_path = self.paths["server log"]
        with log_path.open("w") as log:
            server = subprocess.Popen(cmd, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            client = _wait_ready(sock, server, log_path)
            _say(f"complete: {self.cfg.prompt!r} through {sock}")
            start = time.perf_counter()
            pieces = []
            with client:
                print(self.cfg.prompt, end="", flush=True)
                # Greedy with a repetition penalty: a model trained for minutes otherwise loops on one line.
                for piece in client.complete(self.cfg.prompt, max_tokens=self.cfg.max_tokens, temperature=0.0, repetition_penalty=1.3):
                    pieces.append(piece)
                    print(piece, end="", flush=True)
            print()
            self.facts["completion"] = "".join(pieces)
            self.facts["completion_s"] = time.perf_counter() - start
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            if server.returncode not in (0, -15):
                sys.stderr.write(log_path.read_text())
        if sock.exists():
            raise InputError(f"the server left its socket {sock} behind")

    # ----------------------------------------------------------- summary

    def summary(self) -> str:
        arch = load_arch(self.paths["arch"])
        trained = json.loads((self.paths["checkpoint"] / "train_result.json").read_text())
        bench, decode = self.facts["bench"], self.facts["decode"]
        p = self.paths
        rows = [
            ("architecture", f"{arch.short()}  ({arch.params() / 1e6:.2f}M params, vocab {arch.vocab_size})"),
            ("latency budget", f"{self.facts['budget_ms']:.3f} ms/token at context {self.cfg.latency_context}"),
            ("decode step", f"predicted {decode.predicted_ms:.3f} ms, measured {decode.measured_ms:.3f} ms (±{decode.spread_ms:.3f}) at context {decode.tokens}"),
            ("training", f"{trained['steps']} steps, {trained['tokens']:,} tokens, {trained['tokens_per_s']:.0f} tokens/s"),
            ("validation loss", f"{trained['val_loss']:.3f} nats/token (perplexity {trained['val_perplexity']:.1f})"),
            ("generation", f"{bench.decode_tokens_per_s:.1f} tokens/s decode, {1000 * bench.ttft_s:.1f} ms to first token ({bench.backend}, {bench.precision})"),
            ("build", self.facts.get("build", "")),
        ]
        rows += [(name, str(path)) for name, path in p.items() if name != "socket" and path.exists()]
        width = max(len(k) for k, _ in rows)
        lines = ["", "merino-edge quickstart: done", ""] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
        lines += [
            "",
            "Keep serving:",
            f"  merino-edge serve {p['bundle']} --socket {p['socket']}",
            f"  merino-edge chat --socket {p['socket']}",
            f"  curl --unix-socket {p['socket']} http://localhost/v1/models",
            "Re-run a stage alone: merino-edge profile | search | train | export | build | serve (see README).",
        ]
        return "\n".join(lines)

    def _model(self) -> dict:
        return {"vocab_size": self.cfg.vocab_size, "proj_dim": self.cfg.proj_dim, "max_positions": self.cfg.max_positions}


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def _wait_ready(sock: Path, server: subprocess.Popen, log_path: Path, timeout: float = 180.0):
    """An ApiClient once the server answers /health with 200; InputError if it dies or never does."""
    from merino_edge.runtime.client import ApiClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise InputError(f"the server exited with status {server.returncode}: {log_path.read_text().strip()[-500:]}")
        if sock.exists():
            client = ApiClient(sock)
            try:
                if client.ready():
                    return client
            except MerinoError:  # bound but not listening yet
                pass
            client.close()
        time.sleep(0.2)
    raise InputError(f"the server did not become ready within {timeout:.0f} s")


def run_quickstart(cfg: QuickstartConfig) -> str:
    """Run every stage (reusing finished ones) and return the summary text."""
    qs = Quickstart(cfg)
    qs.profile()
    qs.search()
    qs.train()
    qs.export()
    qs.build()
    qs.measure()
    qs.serve_and_ask()
    return qs.summary()
