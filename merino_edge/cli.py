"""The `merino-edge` command.

The CLI only parses flags, calls one library function per command and prints.
Every library import happens inside the command that needs it, so that
`merino-edge serve` on a board never imports torch.  Bad input of any kind ends
with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from merino_edge import __version__
from merino_edge.errors import MerinoError

PROG = "merino-edge"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit status 2)."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(message: str) -> None:
    """Raise the one-line error the CLI prints with exit status 2."""
    raise MerinoError(message)


# Each command below is a pair: `_add_<name>(parser)` declares its flags and
# `_run_<name>(args)` calls the library.  Commands register in COMMANDS at the
# bottom of this file.


# ---------------------------------------------------------------- search (#2)


def _add_search(p: argparse.ArgumentParser) -> None:
    from merino_edge import units
    from merino_edge.arch import MAX_POSITIONS, PROJ_DIM, VOCAB_SIZE

    def typed(parse, what):
        def convert(text):
            try:
                return parse(text, what)
            except MerinoError as exc:
                raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{what}: ")) from None

        convert.__name__ = what
        return convert

    def numbers(cast):
        def convert(text):
            try:
                return tuple(cast(v) for v in text.split(","))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None

        return convert

    p.description = (
        "Find the architecture of maximum effectiveness-weighted entropy (Eq. 15) within the budgets, "
        "with the evolutionary algorithm (Alg. 1), and report its gap to the exact optimum. "
        "With no budget flag the budget is --flops 60G. `merino-edge search build-table` rebuilds the entropy table."
    )
    p.add_argument("action", nargs="?", choices=["build-table"], help="build-table: Monte-Carlo the entropy of every matrix shape of the space")
    g = p.add_argument_group("budgets (K, M, G, T decimal; Ki, Mi, Gi, Ti binary)")
    g.add_argument("--params", type=typed(units.parse_count, "--params"), help="unique parameters, e.g. 64M")
    g.add_argument("--flops", type=typed(units.parse_count, "--flops"), help="forward FLOPs at batch 1, sequence 1024 (LM head included), e.g. 60G")
    g.add_argument("--memory", type=typed(units.parse_bytes, "--memory"), help="fp16 weights + KV cache at --memory-context tokens, e.g. 1G or 512Mi")
    g.add_argument("--memory-context", type=int, default=2048, help="context of the memory budget (default 2048)")
    g.add_argument("--latency-ms", type=typed(units.parse_ms, "--latency-ms"), help="predicted decode time per token, e.g. 30ms (needs --profile)")
    g.add_argument("--latency-context", type=int, default=512, help="KV-cache length of the latency budget (default 512)")
    g.add_argument(
        "--latency-margin", type=typed(units.parse_percent, "--latency-margin"), default=None,
        help="search this far below --latency-ms, e.g. 5%% (default: the profile's calibration error, 0 without calibration)",
    )  # fmt: skip
    g.add_argument("--profile", help="device profile JSON from `merino-edge profile`")
    s = p.add_argument_group("search")
    s.add_argument("--blocks", type=int, default=4, help="number of blocks N (default 4)")
    s.add_argument("--iterations", type=int, default=100_000, help="T: mutations (default 100000)")
    s.add_argument("--population", type=int, default=512, help="M (default 512)")
    s.add_argument("--parents", type=int, default=64, help="K (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--alpha", type=numbers(float), default=(0.6, 0.4), help="MHA,FFN weights (default 0.6,0.4)")
    s.add_argument("--beta", type=float, default=1 / 16, help="effectiveness scale (default 0.0625)")
    s.add_argument("--eps", type=float, default=1e-3, help="entropy eps (default 1e-3; another value uses the closed form, or rebuild the table)")
    s.add_argument("--widths", type=numbers(int), help="widths E to search (default Table 5: 64,128,256,...,1024)")
    s.add_argument("--ratios", type=numbers(float), help="FFN ratios R (default 1,1.5,...,4)")
    s.add_argument("--depths", type=numbers(int), help="depths L per block (default 1,2,3,4)")
    m = p.add_argument_group("model settings shared by every candidate (a --profile must have been measured with the same)")
    m.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help=f"tokenizer vocabulary (default {VOCAB_SIZE})")
    m.add_argument("--proj-dim", type=int, default=PROJ_DIM, help=f"embedding projection dim P (default {PROJ_DIM})")
    m.add_argument("--max-positions", type=int, default=MAX_POSITIONS, help=f"position embeddings (default {MAX_POSITIONS})")
    s.add_argument("--out", help="where to write the arch (default arch.json; for build-table, the packaged table)")
    s.add_argument("--pareto", metavar="METRIC=START:STOP:POINTS", help="also sweep one budget, e.g. flops=60G:160G:11")
    s.add_argument("--pareto-out", default="pareto", help="directory for pareto.csv and pareto.png (default ./pareto)")
    s.add_argument("--samples", type=int, default=64, help="build-table: Monte-Carlo samples per shape (default 64)")


def _run_search(args: argparse.Namespace) -> int:
    from merino_edge.arch import TABLE5, Axes
    from merino_edge.search.space import SearchSpace

    axes = Axes(widths=args.widths or TABLE5.widths, ratios=args.ratios or TABLE5.ratios, depths=args.depths or TABLE5.depths)
    space = SearchSpace(axes, args.blocks, vocab_size=args.vocab_size, proj_dim=args.proj_dim, max_positions=args.max_positions)
    if args.action == "build-table":
        from merino_edge.search.entropy import TABLE_PATH, build_table, search_shapes

        out = build_table(search_shapes(axes), eps=args.eps, samples=args.samples, seed=args.seed).save(args.out or TABLE_PATH)
        print(f"wrote {out}")
        return 0
    from merino_edge.search.budgets import Budget
    from merino_edge.search.objective import Objective
    from merino_edge.search.run import run_search

    budget = Budget(
        params=args.params, flops=args.flops, memory=args.memory, latency_ms=args.latency_ms,
        memory_context=args.memory_context, latency_context=args.latency_context, latency_margin=args.latency_margin,
    )  # fmt: skip
    result = run_search(
        budget, space=space, objective=Objective(args.alpha, args.beta, args.eps), profile=args.profile,
        iterations=args.iterations, population=args.population, parents=args.parents, seed=args.seed,
        pareto=args.pareto, pareto_out=args.pareto_out,
    )  # fmt: skip
    print(result.table())
    print(f"wrote {result.save(args.out or 'arch.json')}")
    return 0


# ------------------------------------------------ tokenizer / train (#3)


def _add_tokenizer(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    t = actions.add_parser("train", help="train a BPE SentencePiece model (byte fallback) on a corpus")
    t.add_argument("--data", nargs="+", required=True, help="text files, folders, globs, .jsonl[.gz] with a 'text' field, or hf:NAME[:CONFIG][@SPLIT]")
    t.add_argument("--out", required=True, help="where to write the model, e.g. tokenizer.model")
    t.add_argument("--vocab-size", type=int, default=32000, help="pieces in the vocabulary (default: %(default)s)")
    t.add_argument("--text-unit", choices=("file", "paragraph", "line"), default="file", help="what one document of a plain text file is")


def _run_tokenizer(args: argparse.Namespace) -> int:
    from merino_edge.tokenizer import Tokenizer, train_tokenizer
    from merino_edge.training.data import Corpus

    path = train_tokenizer(Corpus(tuple(args.data), args.text_unit), args.out, vocab_size=args.vocab_size)
    tokenizer = Tokenizer(path)
    print(f"wrote {path}: {tokenizer.vocab_size} pieces, sha256 {tokenizer.sha256}")
    return 0


def _add_train(p: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from merino_edge.training.config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}

    def opt(flag: str, kind, help_text: str) -> None:
        p.add_argument(flag, type=kind, default=defaults[flag[2:].replace("-", "_")], help=f"{help_text} (default: %(default)s)")

    p.add_argument("--arch", required=True, help="arch.json from `merino-edge search`")
    p.add_argument("--data", nargs="+", required=True, help="text files, folders, globs, .jsonl[.gz] with a 'text' field, hf:NAME, or a prepared shard dir")
    p.add_argument("--out", required=True, help="output checkpoint directory (transformers layout + trainer_state/)")
    p.add_argument("--tokenizer", help="a trained tokenizer.model (default: train one on --data with the arch's vocab_size)")
    p.add_argument("--text-unit", choices=("file", "paragraph", "line"), default=defaults["text_unit"], help="what one document of a plain text file is")
    opt("--val-fraction", float, "fraction of documents held out for validation")
    p.add_argument("--shards-dir", help="where the token shards go (default: OUT/data)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps (default: 1000 when neither this nor --max-tokens is given)")
    length.add_argument("--max-tokens", type=int, help="training tokens; steps = ceil(max_tokens / batch_tokens)")
    opt("--seq-len", int, "tokens per sequence (paper: 1024)")
    opt("--batch-tokens", int, "effective batch in tokens per optimizer step, over all ranks (paper: 524288 = 512 x 1024)")
    opt("--micro-batch", int, "sequences per forward/backward on one device; the rest is gradient accumulation")
    opt("--lr", float, "peak learning rate (paper: 6e-4)")
    opt("--min-lr", float, "learning rate at the end of the linear decay")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (paper: 1000; default: min(1000, 10%% of the steps))")
    opt("--beta1", float, "AdamW beta1")
    opt("--beta2", float, "AdamW beta2")
    opt("--weight-decay", float, "AdamW weight decay on matrices and embeddings")
    opt("--grad-clip", float, "gradient-norm clipping")
    opt("--eval-every", int, "steps between validation passes")
    opt("--eval-tokens", int, "validation tokens per pass")
    opt("--log-every", int, "steps between training-loss records in trainer_state/log.jsonl")
    opt("--save-every", int, "steps between checkpoints")
    opt("--seed", int, "seed of the initialization, the data order and the validation split")
    p.add_argument("--device", default=defaults["device"], help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="train in fp32 on CUDA too (default: bf16 autocast on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _run_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from merino_edge.training.config import TrainConfig
    from merino_edge.training.trainer import train

    result = train(TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)}))
    val = f", val loss {result.val_loss:.4f} (perplexity {result.val_perplexity:.2f})" if result.val_loss is not None else ""
    print(f"{result.out_dir}: step {result.steps}, {result.tokens:,} tokens, {result.tokens_per_s:,.0f} tokens/s{val}")
    if result.interrupted:
        print(f"interrupted: checkpoint saved at step {result.steps}; continue with --resume", file=sys.stderr)
        return 130
    return 0


# ------------------------------------------- export / generate / bench (#4)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.model)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--fp16", action="store_true", help="also export the FP16 graph (the one TensorRT builds from)")
    p.add_argument("--no-fp32", dest="fp32", action="store_false", help="leave out the FP32 graph")
    p.add_argument("--max-context", type=int, help="longest prompt + completion in tokens (default: the model's max positions)")
    p.add_argument("--max-prompt", type=int, help="longest prompt in tokens (default: the max context)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch (default 8)")
    p.add_argument(
        "--quantize", action="append", choices=["int8", "int4"], default=[],
        help="also a weight-only int8 / int4 graph for ONNX Runtime on a CPU (repeatable; default: none)",
    )  # fmt: skip
    _add_eval_data_flag(p)
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")


def _add_eval_data_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-data", nargs="+", default=[], metavar="PATH",
        help="held-out text for the quantized graphs' perplexity: a prepared shard dir or text files (default: the checkpoint's data/ validation split)",
    )  # fmt: skip


def _print_bundle(bundle) -> None:
    size = sum((bundle.path / name).stat().st_size for name in bundle.manifest.files)
    print(f"bundle {bundle.path}: {bundle.arch.short()}, graphs {', '.join(bundle.precisions)}, max context {bundle.max_context}, {size / 2**20:.1f} MiB")
    for precision, graph in bundle.manifest.graphs.items():
        if "quality" in graph:
            q = graph["quality"]
            weights = (bundle.path / graph["data_file"]).stat().st_size
            print(
                f"  {precision}: {weights / 2**20:.1f} MiB of weights, held-out perplexity {q['perplexity']:.3f} vs fp32 {q['fp32_perplexity']:.3f}"
                f" ({q['increase']:+.2%}, bound {q['max_increase']:.0%}) on {q['tokens']:,} tokens"
            )


def _run_export(args: argparse.Namespace) -> int:
    from merino_edge.export.package import export_bundle

    bundle = export_bundle(
        args.checkpoint, args.out, fp32=args.fp32, fp16=args.fp16, quantize=args.quantize, eval_data=args.eval_data,
        max_context=args.max_context, max_prompt=args.max_prompt, max_batch=args.max_batch, overwrite=args.force,
    )  # fmt: skip
    _print_bundle(bundle)
    return 0


def _add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory with an fp32 graph")
    p.add_argument("--int8", dest="precisions", action="append_const", const="int8", help="add the weight-only int8 graph")
    p.add_argument("--int4", dest="precisions", action="append_const", const="int4", help="add the weight-only int4 graph")
    _add_eval_data_flag(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _run_quantize(args: argparse.Namespace) -> int:
    from merino_edge.export.quantize import quantize_bundle

    if not args.precisions:
        fail("quantize: say which graphs to add: --int8 and/or --int4")
    _print_bundle(quantize_bundle(args.bundle, args.precisions, eval_data=args.eval_data, progress=args.progress))
    return 0


def _add_runtime_flags(p: argparse.ArgumentParser, threads: int | None) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "tensorrt", "torch"], help="inference backend (default auto)")
    p.add_argument("--threads", type=int, default=threads, help=f"CPU threads (default {threads or 'all cores'})")
    p.add_argument("--provider", help="ONNX Runtime execution provider, e.g. cpu or cuda (default cpu)")
    _add_precision_flag(p)


def _add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision", choices=["auto", "fp32", "fp16", "int8", "int4"], default="auto",
        help="which graph to run (default auto: fp16 on a GPU; on a CPU the smallest graph within the quality bound stored in the bundle)",
    )  # fmt: skip


def _add_generate(p: argparse.ArgumentParser) -> None:
    _add_runtime_flags(p, threads=None)
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); never printed")


def _run_generate(args: argparse.Namespace) -> int:
    from merino_edge.runtime import Generator, SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )
    generator = Generator.from_bundle(args.bundle, args.backend, threads=args.threads, provider=args.provider, precision=args.precision)
    for piece in generator.stream(args.prompt, params):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _add_bench(p: argparse.ArgumentParser) -> None:
    _add_runtime_flags(p, threads=2)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="also write the result to this JSON file")


def _run_bench(args: argparse.Namespace) -> int:
    import json

    from merino_edge.runtime.bench import bench_bundle

    result = bench_bundle(
        args.bundle, backend=args.backend, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, threads=args.threads,
        repeats=args.repeats, warmup=args.warmup, provider=args.provider, precision=args.precision,
    )
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=2)
    return 0


# ------------------------------------------------------ build / doctor (#5)


def _add_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory with an FP16 graph (merino-edge export --fp16)")
    p.add_argument("--workspace", type=int, default=1024, metavar="MIB", help="TensorRT workspace pool limit in MiB (default 1024; lower it if the build runs out of memory)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N", help="largest batch the engine accepts (default: the bundle's)")
    p.add_argument("--timing-cache", default=None, metavar="PATH", help="timing cache to reuse and update (default: engines/tensorrt.timing.cache in the bundle)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_build(args: argparse.Namespace) -> int:
    from merino_edge.export.tensorrt import build_engine

    record = build_engine(args.bundle, workspace_mib=args.workspace, max_batch=args.max_batch, timing_cache=args.timing_cache, progress=not args.no_progress)
    print(f"built {args.bundle}: {record.host.describe()}, {record.build_seconds:.0f} s, batch <= {record.max_batch}, context {record.max_context}")
    return 0


def _add_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", nargs="?", default=None, help="also say whether this bundle's TensorRT engine runs here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_precision_flag(p)


def _run_doctor(args: argparse.Namespace) -> int:
    import json

    from merino_edge.runtime.doctor import run_doctor

    report = run_doctor(args.bundle, precision=args.precision)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0


# --------------------------------------------- serve / chat / complete (#6)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory (merino-edge export)")
    p.add_argument("--socket", default=None, metavar="PATH", help="Unix socket (default $XDG_RUNTIME_DIR/merino-edge/api.sock, else /run/merino-edge/api.sock)")
    p.add_argument("--metrics-addr", default="127.0.0.1:9464", metavar="HOST:PORT", help="Prometheus /metrics address (default 127.0.0.1:9464; 'off' for none)")
    p.add_argument("--tcp", default=None, metavar="HOST:PORT", help="also serve the API on TCP (a non-loopback address needs --api-key)")
    p.add_argument("--api-key", default=None, help="key TCP clients must send as 'Authorization: Bearer KEY' (default $MERINO_EDGE_API_KEY)")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "tensorrt", "torch"], help="inference backend (default auto)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads of the ONNX Runtime backend")
    _add_precision_flag(p)
    p.add_argument("--queue-size", type=int, default=32, metavar="N", help="requests that may wait while one generates; more get 429 (default 32)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest request body; larger get 413 (default 1 MiB)")
    p.add_argument("--shutdown-grace", type=float, default=10.0, metavar="S", help="seconds running requests may finish after SIGTERM (default 10)")


def _run_serve(args: argparse.Namespace) -> int:
    from merino_edge.runtime.server import serve

    serve(
        args.bundle,
        socket_path=args.socket,
        metrics_addr=None if args.metrics_addr == "off" else args.metrics_addr,
        tcp=args.tcp,
        api_key=args.api_key,
        backend=args.backend,
        threads=args.threads,
        precision=args.precision,
        queue_size=args.queue_size,
        max_body_bytes=args.max_body_bytes,
        shutdown_grace=args.shutdown_grace,
    )
    return 0


def _add_client_flags(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--socket", default=None, metavar="PATH", help="the server's Unix socket (default: where serve puts it)")
    p.add_argument("--max-tokens", type=int, default=max_tokens, metavar="N", help=f"tokens to generate at most (default {max_tokens})")
    p.add_argument("--temperature", type=float, default=0.7, metavar="T", help="sampling temperature, 0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="sampling seed")


def _add_chat(p: argparse.ArgumentParser) -> None:
    _add_client_flags(p, max_tokens=256)
    p.add_argument("--system", default=None, metavar="TEXT", help="system message that opens the conversation")


def _run_chat(args: argparse.Namespace) -> int:
    from merino_edge.runtime.client import ApiClient, run_chat

    with ApiClient(args.socket) as client:
        run_chat(client, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    return 0


def _add_complete(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="text to continue")
    _add_client_flags(p, max_tokens=64)


def _run_complete(args: argparse.Namespace) -> int:
    from merino_edge.runtime.client import ApiClient

    with ApiClient(args.socket) as client:
        for text in client.complete(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed):
            print(text, end="", flush=True)
    print()
    return 0


# ------------------------------------------------------------- profile (#7)


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.usage = (
        "merino-edge profile [--backend ort|tensorrt|torch] [--precision fp32|fp16] [--threads N] [--quick] [--clock wall|cpu] [--calibration 8] [--out profile.json] [--workdir DIR] [--export-only]\n"
        "       merino-edge profile validate PROFILE.json [--archs 30 | --arch arch.json] [--contexts 100 1000] [--out DIR] [--workdir DIR]"
    )
    p.add_argument("action", nargs="?", choices=["validate"], help="validate: time random whole models against PROFILE's predictions")
    p.add_argument("profile", nargs="?", help="validate: the profile.json to check")
    p.add_argument("--backend", choices=["ort", "tensorrt", "torch"], default="ort", help="what to time the parts on (default ort)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default=None, help="graph precision (default fp16 for tensorrt, else fp32)")
    p.add_argument("--device", default=None, help="torch backend: cpu or cuda (default cuda when available); tensorrt: the GPU index (default 0)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every CPU this process may use)")
    p.add_argument("--quick", action="store_true", help="fewer contexts, lengths and repetitions (every (E, R) is still timed)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: time this process's CPU time, for a machine busy with other work (needs --threads 1)")
    p.add_argument("--flush-mib", type=int, default=None, help="buffer written before each cold decode run (default: twice the last-level cache, >= 64)")
    p.add_argument("--out", default=None, help="profile: the JSON to write (default profile.json); validate: a folder (default validation/)")
    p.add_argument("--workdir", default=None, help="micro-graphs and partial results, kept for resuming (default: beside --out)")
    p.add_argument("--export-only", action="store_true", help="only export the micro-graphs into --workdir (where torch is), for a board without torch")
    # 8: on the development machine 12 models fitted no better on held-out ones (docs/device-profile.md).
    p.add_argument(
        "--calibration", type=int, default=8, help="whole random models to fit the cache share and prefill scales on (ort backend; 0: none; default 8)"
    )
    p.add_argument("--archs", type=int, default=30, help="validate: random architectures to time (default 30)")
    p.add_argument("--seed", type=int, default=0, help="validate: seed of the random architectures")
    p.add_argument("--arch", action="append", default=[], help="validate: time this arch.json instead of random ones (repeatable)")
    p.add_argument("--contexts", type=int, nargs="+", default=None, help="validate: decode contexts to time (default 100 1000)")


def _run_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.action == "validate":
        from merino_edge.arch import load_arch
        from merino_edge.device_profile import DeviceProfile
        from merino_edge.jetson.models import model_dirs, random_archs
        from merino_edge.jetson.validate import DECODE_CONTEXTS, validate_profile

        if not args.profile:
            fail("profile validate: name the profile.json to validate")
        profile = DeviceProfile.load(args.profile)
        out = Path(args.out or "validation")
        models = Path(args.workdir or out / "models")
        try:
            from merino_edge.export.micro import export_validation_models
        except ImportError:  # on the board: time the models exported elsewhere into `models`
            folders = model_dirs(models)
        else:
            model = {k: getattr(profile, k) for k in ("vocab_size", "proj_dim", "head_dim", "max_positions")}
            calibrated = profile.calibration.archs if profile.calibration else ()
            archs = [load_arch(a) for a in args.arch] or random_archs(args.archs, profile.axes, seed=args.seed, exclude=calibrated, **model)
            folders = export_validation_models(archs, models, precision=profile.backend.precision)
        contexts = tuple(args.contexts or DECODE_CONTEXTS)
        # Random archs are held out from the calibration; archs the user names are timed whatever they are.
        print(validate_profile(args.profile, folders, out, decode_contexts=contexts, skip_calibrated=not args.arch).summary())
        print(f"wrote {out / 'validation.json'} and {out / 'validation.png'}")
        return 0
    from merino_edge.export.parts import GRAPHS_FILE
    from merino_edge.jetson.models import model_dirs
    from merino_edge.jetson.profile import CALIBRATION_DIR, profile_device, summary

    precision = args.precision or ("fp16" if args.backend == "tensorrt" else "fp32")
    if args.backend == "tensorrt" and precision != "fp16":
        fail("profile --backend tensorrt builds FP16 engines: use --precision fp16 (the default for tensorrt)")
    if args.backend == "tensorrt":
        from merino_edge.runtime.backends.tensorrt import import_tensorrt

        import_tensorrt()  # a missing TensorRT says so before anything is exported
    out = Path(args.out or "profile.json")
    workdir = Path(args.workdir or out.with_name(f"{out.stem}.{args.backend}-{precision}.work"))
    if args.calibration < 0:
        fail(f"--calibration must be 0 or more, got {args.calibration}")
    runners, micro = None, None
    try:
        from merino_edge.export import micro
    except ImportError as exc:  # on the board: export where torch is installed, copy the work dir
        if args.backend == "torch" or args.export_only or not (workdir / GRAPHS_FILE).exists():
            fail(f"exporting the micro-graphs needs torch ({exc}); run `merino-edge profile --export-only --workdir DIR` where torch is installed and pass that DIR here as --workdir")
    if args.backend == "torch":
        runners = micro.TorchRunners(precision, args.device, args.threads)
    elif micro is not None and not (workdir / GRAPHS_FILE).exists():
        micro.export_micro_graphs(workdir, precision=precision)
    # Whole models to calibrate on: timed on ONNX Runtime, so not for the torch backend.
    calibration = None
    if args.calibration and args.backend == "ort":
        if micro is not None:
            calibration = micro.export_calibration_models(workdir, args.calibration, precision=precision)
        else:
            calibration = model_dirs(workdir / CALIBRATION_DIR)[: args.calibration]
    if args.export_only:
        models = f" and {len(calibration)} calibration models" if calibration else ""
        print(f"exported the micro-graphs{models} to {workdir}; copy it to the board and run `merino-edge profile --workdir {workdir.name}` there")
        return 0
    if args.backend == "tensorrt":
        from merino_edge.jetson.profile_tensorrt import TensorRTRunners

        runners = TensorRTRunners(workdir, device=int(args.device or 0))
    flush = None if args.flush_mib is None else args.flush_mib << 20
    profile = profile_device(
        workdir, out, threads=args.threads, quick=args.quick, clock=args.clock, flush_bytes=flush, runners=runners, calibration=calibration
    )
    print(summary(profile))
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------ eval / study (#8)


def _add_eval(p: argparse.ArgumentParser) -> None:
    _add_runtime_flags(p, threads=None)
    p.add_argument("--tasks", default="paper", help="comma-separated tasks or groups: paper (Table 2's nine), all, arc, or e.g. hellaswag,copa (default paper)")
    p.add_argument("--limit", type=int, help="first N items of each task (default: all)")
    p.add_argument("--data-dir", help="offline copy of the eval sets, laid out like merino-edge's eval/ (default: $MERINO_EDGE_EVAL_DATA, else the Hugging Face hub)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per scoring batch (default 8, capped by the bundle's max batch)")
    p.add_argument("--json", dest="json_out", help="also write the report as JSON to this file")


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from merino_edge.evaluation.run import evaluate

    report = evaluate(
        args.bundle, args.tasks, args.backend, args.limit, args.data_dir,
        batch_size=args.batch_size, threads=args.threads, provider=args.provider, precision=args.precision,
    )
    print(report.table())
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    return 0


def _add_study(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="study", metavar="STUDY", parser_class=type(p))
    kinds.required = True
    q = kinds.add_parser("proxy", help="rank correlation of the entropy and other training-free proxies with trained validation loss")
    q.add_argument("--archs", type=int, required=True, help="architectures to sample and train")
    q.add_argument("--budget", required=True, help="flops=N and/or params=N, e.g. flops=110G")
    q.add_argument("--tokens", required=True, help="training tokens per architecture, e.g. 50M")
    q.add_argument("--data", nargs="+", required=True, help="training text (files, folders, .jsonl[.gz]) or a prepared shard folder")
    q.add_argument("--out", required=True, help="study folder (results.jsonl, report.md, scatter_*.png, models/)")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    q.add_argument("--resume", action="store_true", help="continue a killed study in --out (finished architectures are not trained again)")
    q.add_argument("--min-fraction", type=float, default=0.5, help="each architecture uses at least this share of the budget (default 0.5)")
    q.add_argument("--widths", help="comma-separated widths of the space (default Table 5)")
    q.add_argument("--ratios", help="comma-separated FFN ratios (default Table 5)")
    q.add_argument("--depths", help="comma-separated depths (default Table 5)")
    q.add_argument("--blocks", type=int, default=4, help="blocks per architecture (default 4)")
    q.add_argument("--vocab-size", type=int, default=32000, help="tokenizer and model vocabulary (default 32000)")
    q.add_argument("--proj-dim", type=int, default=768, help="embedding/projection dim P (default 768)")
    q.add_argument("--max-positions", type=int, default=2048, help="learned positions (default 2048)")
    q.add_argument("--tokenizer", help="tokenizer.model to use (default: trained once on --data)")
    q.add_argument("--text-unit", default="file", choices=["file", "paragraph", "line"], help="what a document is in plain text files")
    q.add_argument("--seq-len", type=int, default=512, help="training sequence length (default 512)")
    q.add_argument("--batch-tokens", type=int, default=32768, help="tokens per optimizer step (default 32768)")
    q.add_argument("--micro-batch", type=int, default=16, help="sequences per forward pass (default 16)")
    q.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (default 6e-4)")
    q.add_argument("--eval-tokens", type=int, default=262144, help="validation tokens scored per architecture (default 262144)")
    q.add_argument("--seed", type=int, default=0, help="sampling, init and data-order seed (default 0)")
    q.add_argument("--eps", type=float, default=1e-3, help="entropy eps (default 1e-3)")
    q.add_argument("--alpha", default="0.6,0.4", help="entropy weights alpha1,alpha2 (default 0.6,0.4)")
    q.add_argument("--beta", type=float, default=1 / 16, help="effectiveness weight beta (default 1/16)")


def _run_study(args: argparse.Namespace) -> int:
    from merino_edge.arch import TABLE5, Axes
    from merino_edge.training.study import StudyConfig, parse_budget, run_study
    from merino_edge.units import parse_count

    def numbers(text, kind, default):
        try:
            return tuple(kind(x) for x in text.split(",")) if text else default
        except ValueError:
            fail(f"expected comma-separated numbers, got {text!r}")

    axes = Axes(numbers(args.widths, int, TABLE5.widths), numbers(args.ratios, float, TABLE5.ratios), numbers(args.depths, int, TABLE5.depths))
    cfg = StudyConfig(
        archs=args.archs, budget=parse_budget(args.budget), tokens=parse_count(args.tokens, "--tokens"), data=tuple(args.data),
        out=args.out, device=args.device, axes=axes, blocks=args.blocks, vocab_size=args.vocab_size, proj_dim=args.proj_dim,
        max_positions=args.max_positions, min_fraction=args.min_fraction, tokenizer=args.tokenizer, text_unit=args.text_unit,
        seq_len=args.seq_len, batch_tokens=args.batch_tokens, micro_batch=args.micro_batch, lr=args.lr, eval_tokens=args.eval_tokens,
        seed=args.seed, eps=args.eps, alpha=numbers(args.alpha, float, (0.6, 0.4)), beta=args.beta,
    )
    report = run_study(cfg, resume=args.resume)
    print(report.tables())
    print(f"\nreport, plots and per-architecture results in {args.out}")
    return 0


# ---------------------------------------------------------- quickstart (#9)


def _add_quickstart(p: argparse.ArgumentParser) -> None:
    from merino_edge.quickstart import QuickstartConfig

    d = QuickstartConfig()
    p.description = (
        "Profile this machine, search under a latency budget derived from the profile, train a tokenizer and a model, "
        "export, build (where TensorRT is), serve on a Unix socket and stream one completion through it. "
        "Finished stages are reused: run it again to pick up where it stopped."
    )
    p.add_argument("--workdir", default=str(d.workdir), help="where every artifact goes (default: %(default)s)")
    p.add_argument("--data", nargs="+", default=(), help="training text (files, folders, globs, .jsonl[.gz]); default: the Python documentation shipped with this interpreter")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps (default: %(default)s)")
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="tokens per training step (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads for profiling, training and serving (default: all)")
    p.add_argument("--prompt", default=d.prompt, help="the completion asked through the socket (default: %(default)r)")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="tokens of that completion (default: %(default)s)")


def _run_quickstart(args: argparse.Namespace) -> int:
    from pathlib import Path

    from merino_edge.quickstart import QuickstartConfig, run_quickstart

    cfg = QuickstartConfig(
        workdir=Path(args.workdir), data=tuple(args.data), steps=args.steps, batch_tokens=args.batch_tokens,
        threads=args.threads, prompt=args.prompt, max_tokens=args.max_tokens,
    )  # fmt: skip
    print(run_quickstart(cfg))
    return 0


# ------------------------------------------------------------------- main

COMMANDS = [
    ("profile", "measure per-layer latency on this device and write a device profile", _add_profile, _run_profile),
    ("search", "find the max-entropy architecture under budgets", _add_search, _run_search),
    ("tokenizer", "train a SentencePiece tokenizer", _add_tokenizer, _run_tokenizer),
    ("train", "train a MeRino model from an arch.json", _add_train, _run_train),
    ("export", "export a checkpoint to an ONNX bundle with a KV cache", _add_export, _run_export),
    ("quantize", "add weight-only int8 / int4 graphs (ONNX Runtime, CPU) to a bundle", _add_quantize, _run_quantize),
    ("build", "compile a bundle's ONNX graph into a TensorRT FP16 engine (on the board)", _add_build, _run_build),
    ("generate", "generate text from a bundle", _add_generate, _run_generate),
    ("bench", "time a bundle: time to first token, prefill and decode tokens/s, memory", _add_bench, _run_bench),
    ("serve", "serve a bundle behind an OpenAI-style API on a Unix socket", _add_serve, _run_serve),
    ("chat", "chat with a running server", _add_chat, _run_chat),
    ("complete", "one completion from a running server", _add_complete, _run_complete),
    ("eval", "zero-shot accuracy of a bundle with lm-evaluation-harness", _add_eval, _run_eval),
    ("study", "studies: does the entropy proxy rank architectures like training does?", _add_study, _run_study),
    ("doctor", "what this machine can run and which backend serve picks", _add_doctor, _run_doctor),
    ("quickstart", "the whole pipeline on this machine, end to end", _add_quickstart, _run_quickstart),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Entropy-designed small language models, from search to serving on edge boards.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text, add, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except MerinoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
