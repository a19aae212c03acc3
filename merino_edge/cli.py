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
    pass  # TODO(session): flags


def _run_search(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# ------------------------------------------------ tokenizer / train (#3)


def _add_tokenizer(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_tokenizer(args: argparse.Namespace) -> int:
    fail("not implemented yet")


def _add_train(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_train(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# ------------------------------------------- export / generate / bench (#4)


def _add_export(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_export(args: argparse.Namespace) -> int:
    fail("not implemented yet")


def _add_generate(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_generate(args: argparse.Namespace) -> int:
    fail("not implemented yet")


def _add_bench(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_bench(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# ------------------------------------------------------ build / doctor (#5)


def _add_build(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_build(args: argparse.Namespace) -> int:
    fail("not implemented yet")


def _add_doctor(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_doctor(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# --------------------------------------------- serve / chat / complete (#6)


def _add_serve(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_serve(args: argparse.Namespace) -> int:
    fail("not implemented yet")


def _add_chat(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_chat(args: argparse.Namespace) -> int:
    fail("not implemented yet")


def _add_complete(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_complete(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# ------------------------------------------------------------- profile (#7)


def _add_profile(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_profile(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# ------------------------------------------------------ eval / study (#8)


def _add_eval(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_eval(args: argparse.Namespace) -> int:
    fail("not implemented yet")


def _add_study(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_study(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# ---------------------------------------------------------- quickstart (#9)


def _add_quickstart(p: argparse.ArgumentParser) -> None:
    pass  # TODO(session): flags


def _run_quickstart(args: argparse.Namespace) -> int:
    fail("not implemented yet")


# ------------------------------------------------------------------- main

COMMANDS = [
    ("profile", "measure per-layer latency on this device and write a device profile", _add_profile, _run_profile),
    ("search", "find the max-entropy architecture under budgets", _add_search, _run_search),
    ("tokenizer", "train a SentencePiece tokenizer", _add_tokenizer, _run_tokenizer),
    ("train", "train a MeRino model from an arch.json", _add_train, _run_train),
    ("export", "export a checkpoint to an ONNX bundle with a KV cache", _add_export, _run_export),
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
