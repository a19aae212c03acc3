"""The `merino-edge` command.

The CLI only parses flags, calls one library function per command and prints.
Every library import happens inside the command that needs it, so that
`merino-edge serve` on a board never imports torch.  Bad input of any kind ends
with exit status 2 and one line on stderr.

A flag whose setting belongs to a config dataclass (or to the library function
a command calls) takes its default from there: `cli_flags.option` leaves the flag out of
the parsed arguments unless it is given, the dataclass fills in the rest, and
`--help` shows the dataclass's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from merino_edge import __version__
from merino_edge.cli_flags import PRESET_SETTINGS, HelpFormatter, Parser, Subcommands, default_of, given, numbers, option, typed
from merino_edge.errors import MerinoError

PROG = "merino-edge"


def _add_axes(p: argparse.ArgumentParser, what: str = "to search") -> None:
    """--widths, --ratios, --depths: the space's axes (default Table 5's)."""
    from merino_edge.arch import TABLE5

    option(p, TABLE5, "--widths", type=numbers(int), help=f"widths E {what}")
    option(p, TABLE5, "--ratios", type=numbers(float), help="FFN ratios R")
    option(p, TABLE5, "--depths", type=numbers(int), help="depths L per block")


def _add_objective(p: argparse.ArgumentParser, source) -> None:
    """--alpha, --beta, --eps: the weights of Eq. 15 and the entropy's eps."""
    option(p, source, "--alpha", type=numbers(float), help="MHA,FFN weights alpha1,alpha2")
    option(p, source, "--beta", type=float, help="effectiveness scale beta")
    option(p, source, "--eps", type=float, help="entropy eps (another value than the table's uses the closed form, or rebuild the table)")


def _axes(args: argparse.Namespace):
    """The axes --widths, --ratios and --depths give (Table 5's where not given)."""
    from merino_edge.arch import TABLE5

    return dataclasses.replace(TABLE5, **given(args, TABLE5))


# Each command below is a pair: `_add_<name>(parser)` declares its flags and
# `_run_<name>(args)` calls the library.  Commands register in COMMANDS at the
# bottom of this file.


# ------------------------------------------------------------------ search


class _Preset(argparse.Action):
    """`--preset NAME`: the preset's settings, except those a flag on the command line sets."""

    def __call__(self, parser, namespace, value, option_string=None):
        from merino_edge.search.presets import PRESETS

        # A flag given before --preset keeps its value, one given after replaces the preset's.
        made = {dest: setting for dest, setting in PRESETS[value].items() if not hasattr(namespace, dest)}
        for dest, setting in made.items():
            setattr(namespace, dest, setting)
        setattr(namespace, PRESET_SETTINGS, made)


def _add_search(p: argparse.ArgumentParser) -> None:
    from merino_edge import units
    from merino_edge.arch import FLOPS_CONVENTIONS
    from merino_edge.search.budgets import Budget
    from merino_edge.search.entropy import build_table
    from merino_edge.search.objective import Objective
    from merino_edge.search.presets import PRESETS
    from merino_edge.search.run import SearchResult, run_search
    from merino_edge.search.space import SearchSpace

    p.description = (
        "Find the architecture of maximum effectiveness-weighted entropy (Eq. 15) within the budgets, "
        "with the evolutionary algorithm (Alg. 1), and report its gap to the exact optimum. "
        "With no budget flag the budget is --flops 60G. `merino-edge search build-table` rebuilds the entropy table."
    )
    g = p.add_argument_group("budgets (K, M, G, T decimal; Ki, Mi, Gi, Ti binary)")
    option(g, Budget, "--params", type=typed(units.parse_count, "--params"), help="unique parameters, e.g. 64M")
    option(g, Budget, "--flops", type=typed(units.parse_count, "--flops"), help="forward FLOPs at batch 1, sequence 1024, counted by --flops-convention, e.g. 60G")
    option(
        g, Budget, "--flops-convention", choices=list(FLOPS_CONVENTIONS),
        help="full: 2 x MACs of every matmul, LM head included; paper: 1 FLOP per MAC, LM head left out (the paper's 60/110/160G)",
    )  # fmt: skip
    option(g, Budget, "--memory", type=typed(units.parse_bytes, "--memory"), help="fp16 weights + KV cache at --memory-context tokens, e.g. 1G or 512Mi")
    option(g, Budget, "--memory-context", type=int, help="context of the memory budget")
    option(g, Budget, "--latency-ms", type=typed(units.parse_ms, "--latency-ms"), help="predicted decode time per token, e.g. 30ms (needs --profile)")
    option(g, Budget, "--latency-context", type=int, help="KV-cache length of the latency budget")
    option(
        g, Budget, "--latency-margin", type=typed(units.parse_percent, "--latency-margin"),
        help="search this far below --latency-ms, e.g. 5%% (default: the profile's calibration error, 0 without calibration)",
    )  # fmt: skip
    option(g, run_search, "--profile", help="device profile JSON from `merino-edge profile`")
    s = p.add_argument_group("search")
    s.add_argument(
        "--preset", choices=list(PRESETS), action=_Preset, dest=argparse.SUPPRESS,
        help="paper: the paper's own search (vocabulary 50272, P 768, 2048 positions, N 4, Table 5, T/M/K 100000/512/64, "
        "alpha 0.6,0.4, beta 1/16, --flops-convention paper); flags on the command line override it",
    )  # fmt: skip
    option(s, SearchSpace, "--blocks", type=int, help="number of blocks N")
    option(s, run_search, "--iterations", type=int, help="T: mutations")
    option(s, run_search, "--population", type=int, help="M")
    option(s, run_search, "--parents", type=int, help="K")
    option(s, run_search, "--seed", type=int, help="seed of the evolution")
    _add_objective(s, Objective)
    _add_axes(s)
    m = p.add_argument_group("model settings shared by every candidate (a --profile must have been measured with the same)")
    option(m, SearchSpace, "--vocab-size", type=int, help="tokenizer vocabulary")
    option(m, SearchSpace, "--proj-dim", type=int, help="embedding projection dim P")
    option(m, SearchSpace, "--max-positions", type=int, help="position embeddings")
    option(s, SearchResult.save, "--out", dest="path", help="where to write the arch")
    option(s, run_search, "--pareto", metavar="METRIC=START:STOP:POINTS", help="also sweep one budget, e.g. flops=60G:160G:11")
    option(s, run_search, "--pareto-out", help="directory for pareto.csv and pareto.png")
    actions = p.add_subparsers(dest="action", metavar="[ACTION]", parser_class=type(p), action=Subcommands)
    t = actions.add_parser(
        "build-table", help="Monte-Carlo the entropy of every matrix shape of the space into the packaged table",
        description="Monte-Carlo the entropy of every matrix shape of the space (the table the search reads).", formatter_class=HelpFormatter,
    )  # fmt: skip
    _add_axes(t, "whose shapes to tabulate")
    option(t, build_table, "--eps", type=float, help="entropy eps")
    option(t, build_table, "--samples", type=int, help="Monte-Carlo samples per shape")
    option(t, build_table, "--seed", type=int, help="seed of the samples")
    t.add_argument("--out", help="where to write the table (default: the packaged table)")
    t.set_defaults(_run=_run_build_table)
    actions.refuse_their_flags(p)


def _run_search(args: argparse.Namespace) -> int:
    from merino_edge.search.budgets import Budget
    from merino_edge.search.objective import Objective
    from merino_edge.search.run import run_search
    from merino_edge.search.space import SearchSpace

    space = SearchSpace(_axes(args), **given(args, SearchSpace))
    result = run_search(Budget(**given(args, Budget)), space=space, objective=Objective(**given(args, Objective)), **given(args, run_search))
    print(result.table())
    print(f"wrote {result.save(**given(args, result.save))}")
    return 0


def _run_build_table(args: argparse.Namespace) -> int:
    from merino_edge.search.entropy import TABLE_PATH, build_table, search_shapes

    out = build_table(search_shapes(_axes(args)), **given(args, build_table)).save(args.out or TABLE_PATH)
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------- tokenizer / train


def _add_tokenizer(p: argparse.ArgumentParser) -> None:
    from merino_edge.tokenizer import train_tokenizer
    from merino_edge.training.data import TEXT_UNITS, Corpus

    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    t = actions.add_parser("train", help="train a BPE SentencePiece model (byte fallback) on a corpus", formatter_class=HelpFormatter)
    t.add_argument("--data", nargs="+", required=True, help="text files, folders, globs, .jsonl[.gz] with a 'text' field, or hf:NAME[:CONFIG][@SPLIT]")
    t.add_argument("--out", required=True, help="where to write the model, e.g. tokenizer.model")
    option(t, train_tokenizer, "--vocab-size", type=int, help="pieces in the vocabulary")
    option(t, Corpus, "--text-unit", choices=TEXT_UNITS, help="what one document of a plain text file is")


def _run_tokenizer(args: argparse.Namespace) -> int:
    from merino_edge.tokenizer import Tokenizer, train_tokenizer
    from merino_edge.training.data import Corpus

    path = train_tokenizer(Corpus(tuple(args.data), **given(args, Corpus)), args.out, **given(args, train_tokenizer))
    tokenizer = Tokenizer(path)
    print(f"wrote {path}: {tokenizer.vocab_size} pieces, sha256 {tokenizer.sha256}")
    return 0


def _add_train(p: argparse.ArgumentParser) -> None:
    from merino_edge.training.config import TrainConfig
    from merino_edge.training.data import TEXT_UNITS

    def opt(flag: str, kind, help_text: str) -> None:
        option(p, TrainConfig, flag, type=kind, help=help_text)

    p.add_argument("--arch", required=True, help="arch.json from `merino-edge search`")
    p.add_argument("--data", nargs="+", required=True, help="text files, folders, globs, .jsonl[.gz] with a 'text' field, hf:NAME, or a prepared shard dir")
    p.add_argument("--out", required=True, help="output checkpoint directory (transformers layout + trainer_state/)")
    option(p, TrainConfig, "--tokenizer", help="a trained tokenizer.model (default: train one on --data with the arch's vocab_size)")
    option(p, TrainConfig, "--text-unit", choices=TEXT_UNITS, help="what one document of a plain text file is")
    opt("--val-fraction", float, "fraction of documents held out for validation")
    option(p, TrainConfig, "--shards-dir", help="where the token shards go (default: OUT/data)")
    length = p.add_mutually_exclusive_group()
    option(length, TrainConfig, "--max-steps", type=int, help="optimizer steps (default: 1000 when neither this nor --max-tokens is given)")
    option(length, TrainConfig, "--max-tokens", type=int, help="training tokens; steps = ceil(max_tokens / batch_tokens)")
    opt("--seq-len", int, "tokens per sequence (paper: 1024)")
    opt("--batch-tokens", int, "effective batch in tokens per optimizer step, over all ranks (paper: 524288 = 512 x 1024)")
    opt("--micro-batch", int, "sequences per forward/backward on one device; the rest is gradient accumulation")
    opt("--lr", float, "peak learning rate (paper: 6e-4)")
    opt("--min-lr", float, "learning rate at the end of the linear decay")
    opt("--warmup", int, "warm-up steps (paper: 1000; default: min(1000, 10%% of the steps))")
    opt("--beta1", float, "AdamW beta1")
    opt("--beta2", float, "AdamW beta2")
    opt("--weight-decay", float, "AdamW weight decay on matrices and embeddings")
    opt("--grad-clip", float, "gradient-norm clipping")
    opt("--eval-every", int, "steps between validation passes")
    opt("--eval-tokens", int, "validation tokens per pass")
    opt("--log-every", int, "steps between training-loss records in trainer_state/log.jsonl")
    opt("--save-every", int, "steps between checkpoints")
    opt("--seed", int, "seed of the initialization, the data order and the validation split")
    option(p, TrainConfig, "--device", help="auto, cpu, cuda or cuda:N")
    opt("--threads", int, "torch CPU threads (default: torch's)")
    option(p, TrainConfig, "--no-amp", dest="amp", action="store_false", help="train in fp32 on CUDA too (default: bf16 autocast on CUDA)")
    option(p, TrainConfig, "--compile", action="store_true", help="torch.compile the model")
    option(p, TrainConfig, "--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    option(p, TrainConfig, "--no-progress", dest="progress", action="store_false", help="no progress bars")


def _run_train(args: argparse.Namespace) -> int:
    from merino_edge.training.config import TrainConfig
    from merino_edge.training.trainer import train

    result = train(TrainConfig(**given(args, TrainConfig)))
    val = f", val loss {result.val_loss:.4f} (perplexity {result.val_perplexity:.2f})" if result.val_loss is not None else ""
    print(f"{result.out_dir}: step {result.steps}, {result.tokens:,} tokens, {result.tokens_per_s:,.0f} tokens/s{val}")
    if result.interrupted:
        print(f"interrupted: checkpoint saved at step {result.steps}; continue with --resume", file=sys.stderr)
        return 130
    return 0


# ------------------------------------------------ export / generate / bench


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.model)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--fp16", action="store_true", help="also export the FP16 graph (the one TensorRT builds from)")
    p.add_argument("--no-fp32", dest="fp32", action="store_false", help="leave out the FP32 graph")
    p.add_argument("--max-context", type=int, help="longest prompt + completion in tokens (default: the model's max positions)")
    p.add_argument("--max-prompt", type=int, help="longest prompt in tokens (default: the max context)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch")
    p.add_argument(
        "--quantize", action="append", choices=["int8", "int4"], default=[],
        help="also a weight-only int8 / int4 graph for ONNX Runtime on a CPU (repeatable)",
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


def _held_out(ckpt, tokenizer_path, eval_data):
    """Held-out token windows (and their source) for the quantized graphs' perplexity."""
    from pathlib import Path

    from merino_edge.export.quality import EVAL_SEQ_LEN, EVAL_TOKENS
    from merino_edge.tokenizer import Tokenizer
    from merino_edge.training.data import held_out_windows

    return held_out_windows(Path(ckpt), Tokenizer(tokenizer_path), eval_data, seq_len=EVAL_SEQ_LEN, tokens=EVAL_TOKENS)


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from merino_edge.export.package import export_bundle

    held_out = _held_out(args.checkpoint, Path(args.checkpoint) / "tokenizer.model", args.eval_data) if args.quantize else None
    bundle = export_bundle(
        args.checkpoint, args.out, fp32=args.fp32, fp16=args.fp16, quantize=args.quantize, held_out=held_out,
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
    from merino_edge.bundle import Bundle
    from merino_edge.export.quantize import quantize_bundle

    if not args.precisions:
        raise MerinoError("quantize: say which graphs to add: --int8 and/or --int4")
    bundle = Bundle.load(args.bundle)
    held_out = _held_out(bundle.manifest.source.get("checkpoint", ""), bundle.tokenizer_path, args.eval_data)
    _print_bundle(quantize_bundle(bundle.path, args.precisions, held_out, progress=args.progress))
    return 0


def _add_runtime_flags(p: argparse.ArgumentParser, threads: int | None) -> None:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "tensorrt", "torch"], help="inference backend")
    p.add_argument("--threads", type=int, default=threads, help="CPU threads" + ("" if threads else " (default: all cores)"))
    p.add_argument("--provider", help="ONNX Runtime execution provider, e.g. cpu or cuda (default cpu)")
    _add_precision_flag(p)


def _add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision", choices=["auto", "fp32", "fp16", "int8", "int4"], default="auto",
        help="which graph to run (auto: fp16 on a GPU; on a CPU the smallest graph within the quality bound stored in the bundle)",
    )  # fmt: skip


def _add_generate(p: argparse.ArgumentParser) -> None:
    from merino_edge.runtime.sampling import SamplingParams

    _add_runtime_flags(p, threads=None)
    p.add_argument("--prompt", required=True, help="prompt text")
    option(p, SamplingParams, "--max-tokens", type=int, help="tokens to generate at most")
    option(p, SamplingParams, "--temperature", type=float, help="0 = greedy")
    option(p, SamplingParams, "--top-k", type=int, help="0 = off")
    option(p, SamplingParams, "--top-p", type=float, help="nucleus sampling threshold")
    option(p, SamplingParams, "--repetition-penalty", type=float, help="1 = off")
    option(p, SamplingParams, "--seed", type=int, help="sampling seed")
    option(p, SamplingParams, "--stop", action="append", help="stop string (repeatable); never printed")


def _run_generate(args: argparse.Namespace) -> int:
    from merino_edge.runtime import Generator, SamplingParams

    params = SamplingParams(**given(args, SamplingParams))
    generator = Generator.from_bundle(args.bundle, args.backend, threads=args.threads, provider=args.provider, precision=args.precision)
    for piece in generator.stream(args.prompt, params):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _add_bench(p: argparse.ArgumentParser) -> None:
    from merino_edge.runtime.bench import bench_bundle

    _add_runtime_flags(p, threads=default_of(bench_bundle, "threads"))
    option(p, bench_bundle, "--prompt-tokens", type=int, help="prompt length")
    option(p, bench_bundle, "--new-tokens", type=int, help="tokens generated per run")
    option(p, bench_bundle, "--repeats", type=int, help="timed runs; the median is reported")
    option(p, bench_bundle, "--warmup", type=int, help="untimed runs first")
    p.add_argument("--json", help="also write the result to this JSON file")


def _run_bench(args: argparse.Namespace) -> int:
    import json

    from merino_edge.runtime.bench import bench_bundle

    result = bench_bundle(**given(args, bench_bundle))
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=2)
    return 0


# ---------------------------------------------------------- build / doctor


def _add_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory with an FP16 graph (merino-edge export --fp16)")
    p.add_argument("--workspace", type=int, default=1024, metavar="MIB", help="TensorRT workspace pool limit in MiB (lower it if the build runs out of memory)")
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


# ------------------------------------------------- serve / chat / complete


def _parallel(text: str) -> int | None:
    """--parallel: 'auto' (None: the server picks) or a whole number."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a whole number") from None


def _add_serve(p: argparse.ArgumentParser) -> None:
    from merino_edge.runtime.connection_limits import ConnectionLimits
    from merino_edge.runtime.socket_path import DEFAULT_BIND_RETRY_S

    p.add_argument("bundle", help="bundle directory (merino-edge export)")
    p.add_argument("--socket", default=None, metavar="PATH", help="Unix socket (default $XDG_RUNTIME_DIR/merino-edge/api.sock, else /run/merino-edge/api.sock)")
    p.add_argument("--metrics-addr", default="127.0.0.1:9464", metavar="HOST:PORT", help="Prometheus /metrics address ('off' for none)")
    p.add_argument("--tcp", default=None, metavar="HOST:PORT", help="also serve the API on TCP (a non-loopback address needs --api-key; without one, only requests naming this address as Host and sending JSON are answered)")
    p.add_argument("--api-key", default=None, help="key TCP clients must send as 'Authorization: Bearer KEY' (default $MERINO_EDGE_API_KEY)")
    p.add_argument("--backend", default="auto", choices=["auto", "ort", "tensorrt", "torch"], help="inference backend")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads of the ONNX Runtime backend")
    _add_precision_flag(p)
    p.add_argument("--queue-size", type=int, default=32, metavar="N", help="requests that may wait while --parallel ones generate; more get 429")
    p.add_argument("--parallel", type=_parallel, default="auto", metavar="N",
                   help="sequences that decode together, each with its own KV-cache slot (auto: as many as a quarter of the free memory "
                        "holds at the bundle's full context, at most 8 and the bundle's max batch; printed at start; 1 serves requests in turn)")
    p.add_argument("--prefix-cache-mib", type=float, default=64, metavar="MIB",
                   help="memory for the K/V of recent prompts, so a prompt that starts the same way prefills only the rest (0: off)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest request body in bytes; larger get 413")
    p.add_argument("--shutdown-grace", type=float, default=10.0, metavar="S", help="seconds running requests may finish after SIGTERM")
    limits = ConnectionLimits()
    p.add_argument("--max-connections", type=int, default=limits.max_connections, metavar="N", help="open connections on all listeners (socket, TCP, metrics); a request beyond them gets 503")
    p.add_argument("--header-timeout", type=float, default=limits.header_timeout, metavar="S", help="seconds a connection may take to send its request head")
    p.add_argument("--body-timeout", type=float, default=limits.body_timeout, metavar="S", help="seconds a request may take to send its body; later gets 408")
    p.add_argument("--idle-timeout", type=float, default=limits.idle_timeout, metavar="S", help="seconds a kept-alive connection may sit idle")
    p.add_argument("--bind-retry", type=float, default=DEFAULT_BIND_RETRY_S, metavar="S", help="seconds to retry an address in use or not assigned yet, then exit 75")


def _run_serve(args: argparse.Namespace) -> int:
    from merino_edge.runtime.connection_limits import ConnectionLimits
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
        parallel=args.parallel,
        prefix_cache_mib=args.prefix_cache_mib,
        max_body_bytes=args.max_body_bytes,
        shutdown_grace=args.shutdown_grace,
        limits=ConnectionLimits(args.max_connections, args.header_timeout, args.body_timeout, args.idle_timeout),
        bind_retry_s=args.bind_retry,
    )
    return 0


def _add_client_flags(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--socket", default=None, metavar="PATH", help="the server's Unix socket (default: where serve puts it)")
    p.add_argument("--max-tokens", type=int, default=max_tokens, metavar="N", help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.7, metavar="T", help="sampling temperature, 0 = greedy")
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


# ----------------------------------------------------------------- profile


def _add_profile(p: argparse.ArgumentParser) -> None:
    from pathlib import Path

    from merino_edge.profiling.run import BACKENDS, ProfileConfig
    from merino_edge.profiling.timing import CLOCKS
    from merino_edge.profiling.validate import ValidateConfig

    p.description = (
        "Time every part of a MeRino model (each (E, R) layer, projections, embedding, head) on this device and write "
        "a device profile; `merino-edge profile validate` checks its predictions on whole models."
    )
    option(p, ProfileConfig, "--backend", choices=BACKENDS, help="what to time the parts on")
    option(p, ProfileConfig, "--precision", choices=["fp32", "fp16"], help="graph precision (default: fp16 for tensorrt, else fp32)")
    option(p, ProfileConfig, "--device", help="torch backend: cpu or cuda (default: cuda when available); tensorrt: the GPU index, 0 when not given")
    option(p, ProfileConfig, "--threads", type=int, help="CPU threads (default: every CPU this process may use)")
    option(p, ProfileConfig, "--quick", action="store_true", help="fewer contexts, lengths and repetitions (every (E, R) is still timed)")
    option(p, ProfileConfig, "--clock", choices=list(CLOCKS), help="cpu: time this process's CPU time, for a machine busy with other work (needs --threads 1)")
    option(p, ProfileConfig, "--flush-mib", type=int, help="buffer written before each cold decode run (default: twice the last-level cache, >= 64)")
    option(p, ProfileConfig, "--out", type=Path, help="the profile JSON to write")
    option(p, ProfileConfig, "--workdir", type=Path, help="micro-graphs and partial results, kept for resuming (default: beside --out)")
    option(p, ProfileConfig, "--export-only", action="store_true", help="only export the micro-graphs into --workdir (where torch is), for a board without torch")
    option(p, ProfileConfig, "--calibration", type=int, help="whole random models to fit the cache share and prefill scales on (ort backend; 0: none)")
    actions = p.add_subparsers(dest="action", metavar="[ACTION]", parser_class=type(p), action=Subcommands)
    v = actions.add_parser(
        "validate", help="time random whole models against a profile's predictions",
        description="Time random whole models (held out from the calibration) against PROFILE's predictions: MAPE, share within 10 %, Spearman, a scatter plot.",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    v.add_argument("profile", type=Path, metavar="PROFILE", help="the profile.json to check")
    option(v, ValidateConfig, "--archs", type=int, help="random architectures to time")
    option(v, ValidateConfig, "--seed", type=int, help="seed of the random architectures")
    option(v, ValidateConfig, "--arch", type=Path, action="append", help="time this arch.json instead of random ones (repeatable)")
    option(v, ValidateConfig, "--contexts", type=int, nargs="+", help="decode contexts to time")
    option(v, ValidateConfig, "--out", type=Path, help="folder for validation.json and validation.png")
    option(v, ValidateConfig, "--workdir", type=Path, help="the exported models (default: OUT/models; on a board without torch, export them there elsewhere)")
    v.set_defaults(_run=_run_profile_validate)
    actions.refuse_their_flags(p)


def _run_profile(args: argparse.Namespace) -> int:
    from merino_edge.profiling.run import ProfileConfig, run_profile, summary

    cfg = ProfileConfig(**given(args, ProfileConfig))
    run = run_profile(cfg)
    if run.profile is None:
        models = f" and {len(run.calibration)} calibration models" if run.calibration else ""
        print(f"exported the micro-graphs{models} to {run.workdir}; copy it to the board and run `merino-edge profile --workdir {run.workdir.name}` there")
        return 0
    print(summary(run.profile))
    print(f"wrote {cfg.out}")
    return 0


def _run_profile_validate(args: argparse.Namespace) -> int:
    from merino_edge.profiling.validate import ValidateConfig, run_validation

    cfg = ValidateConfig(**given(args, ValidateConfig))
    print(run_validation(cfg).summary())
    print(f"wrote {cfg.out / 'validation.json'} and {cfg.out / 'validation.png'}")
    return 0


# ------------------------------------------------------------ eval / study


def _add_eval(p: argparse.ArgumentParser) -> None:
    _add_runtime_flags(p, threads=None)
    p.add_argument("--tasks", default="paper", help="comma-separated tasks or groups: paper (Table 2's nine), all, arc, or e.g. hellaswag,copa")
    p.add_argument("--limit", type=int, help="first N items of each task (default: all)")
    p.add_argument("--data-dir", help="offline copy of the eval sets, laid out like merino-edge's eval/ (default: $MERINO_EDGE_EVAL_DATA, else the Hugging Face hub)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per scoring batch, capped by the bundle's max batch")
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
    from merino_edge.training.data import TEXT_UNITS
    from merino_edge.training.study import StudyConfig

    kinds = p.add_subparsers(dest="study", metavar="STUDY", parser_class=type(p))
    kinds.required = True
    q = kinds.add_parser(
        "proxy", help="rank correlation of the entropy and other training-free proxies with trained validation loss", formatter_class=HelpFormatter
    )
    q.add_argument("--archs", type=int, required=True, help="architectures to sample and train")
    q.add_argument("--budget", required=True, help="flops=N and/or params=N, e.g. flops=110G")
    q.add_argument("--tokens", required=True, help="training tokens per architecture, e.g. 50M")
    q.add_argument("--data", nargs="+", required=True, help="training text (files, folders, .jsonl[.gz]) or a prepared shard folder")
    q.add_argument("--out", required=True, help="study folder (results.jsonl, report.md, scatter_*.png, models/)")
    option(q, StudyConfig, "--device", help="auto, cpu, cuda or cuda:N")
    q.add_argument("--resume", action="store_true", help="continue a killed study in --out (finished architectures are not trained again)")
    option(q, StudyConfig, "--min-fraction", type=float, help="each architecture uses at least this share of the budget")
    _add_axes(q, "of the space")
    option(q, StudyConfig, "--blocks", type=int, help="blocks per architecture")
    option(q, StudyConfig, "--vocab-size", type=int, help="tokenizer and model vocabulary")
    option(q, StudyConfig, "--proj-dim", type=int, help="embedding/projection dim P")
    option(q, StudyConfig, "--max-positions", type=int, help="learned positions")
    option(q, StudyConfig, "--tokenizer", help="tokenizer.model to use (default: trained once on --data)")
    option(q, StudyConfig, "--text-unit", choices=TEXT_UNITS, help="what a document is in plain text files")
    option(q, StudyConfig, "--seq-len", type=int, help="training sequence length")
    option(q, StudyConfig, "--batch-tokens", type=int, help="tokens per optimizer step")
    option(q, StudyConfig, "--micro-batch", type=int, help="sequences per forward pass")
    option(q, StudyConfig, "--lr", type=float, help="peak learning rate")
    option(q, StudyConfig, "--eval-tokens", type=int, help="validation tokens scored per architecture")
    option(q, StudyConfig, "--seed", type=int, help="sampling, init and data-order seed")
    _add_objective(q, StudyConfig)
    r = kinds.add_parser("report", help="recompute a study's report.md, report.json and plots from the architectures finished so far")
    r.add_argument("study_dir", metavar="STUDY", help="a `study proxy` folder (it may still be running)")
    t = kinds.add_parser(
        "pairs", help="the paper's Table 1 (wide vs deep, equal params) and Table 4 (shared vs unshared, equal FLOPs) pairs, trained like a study",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    t.add_argument("--study", dest="study_dir", required=True, help="a `study proxy` folder: its recipe, tokenizer, data and budget are used")
    t.add_argument("--out", required=True, help="folder for results.jsonl, models/, pairs.json and pairs.md")
    t.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's)")
    t.add_argument("--seed", type=int, help="init and data-order seed (default: the study's; another one repeats the pairs to show the run-to-run spread)")
    t.add_argument("--resume", action="store_true", help="continue a killed run in --out (finished models are not trained again)")


def _run_study(args: argparse.Namespace) -> int:
    if args.study == "report":
        from merino_edge.training.study import report_study

        print(report_study(args.study_dir).tables())
        return 0
    if args.study == "pairs":
        from merino_edge.training.paper_pairs import run_pairs

        print(run_pairs(args.study_dir, args.out, device=args.device, seed=args.seed, resume=args.resume))
        return 0
    from merino_edge.training.study import StudyConfig, parse_budget, run_study
    from merino_edge.units import parse_count

    settings = {**given(args, StudyConfig), "budget": parse_budget(args.budget), "tokens": parse_count(args.tokens, "--tokens")}
    cfg = StudyConfig(**settings, data=tuple(args.data), axes=_axes(args))
    report = run_study(cfg, resume=args.resume)
    print(report.tables())
    print(f"\nreport, plots and per-architecture results in {args.out}")
    return 0


# -------------------------------------------------------------- quickstart


def _add_quickstart(p: argparse.ArgumentParser) -> None:
    from pathlib import Path

    from merino_edge.quickstart import QuickstartConfig

    p.description = (
        "Profile this machine, search under a latency budget derived from the profile, train a tokenizer and a model, "
        "export, build (where TensorRT is), serve on a Unix socket and stream one completion through it. "
        "Finished stages are reused: run it again to pick up where it stopped."
    )
    option(p, QuickstartConfig, "--workdir", type=Path, help="where every artifact goes")
    option(p, QuickstartConfig, "--data", nargs="+", help="training text (files, folders, globs, .jsonl[.gz]); default: the Python documentation shipped with this interpreter")
    option(p, QuickstartConfig, "--steps", type=int, help="training steps")
    option(p, QuickstartConfig, "--batch-tokens", type=int, help="tokens per training step")
    option(p, QuickstartConfig, "--threads", type=int, help="CPU threads for profiling, training and serving (default: all)")
    option(p, QuickstartConfig, "--prompt", help="the completion asked through the socket")
    option(p, QuickstartConfig, "--max-tokens", type=int, help="tokens of that completion")


def _run_quickstart(args: argparse.Namespace) -> int:
    from merino_edge.quickstart import QuickstartConfig, run_quickstart

    print(run_quickstart(QuickstartConfig(**given(args, QuickstartConfig))))
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
    parser = Parser(prog=PROG, description="Entropy-designed small language models, from search to serving on edge boards.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, help_text, add, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except MerinoError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
