"""How a `merino-edge` command declares its flags.

A flag whose setting belongs to a config dataclass (or to the library function
a command calls) takes its default from there: `option` leaves the flag out of
the parsed arguments unless it is given, `given` hands the dataclass what was
given so it fills in the rest, and `HelpFormatter` prints the dataclass's
default in `--help`.  `Subcommands` keeps the flags of a command and of its
sub-commands apart.  Usage errors are one line and exit status 2 (`Parser`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect

from merino_edge.errors import MerinoError


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit status 2)."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends every option with its default, unless it has none (None) or is a switch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = getattr(action, "library_default", action.default)
        text = action.help or ""
        if not action.option_strings or action.nargs == 0 or default in (None, argparse.SUPPRESS, [], ()) or "%(default" in text:
            return text
        if isinstance(default, (tuple, list)):
            default = (" " if action.nargs in ("+", "*") else ",").join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        return f"{text} (default: {str(default).replace('%', '%%')})"


PRESET_SETTINGS = "_preset_settings"  # where a preset flag leaves, in the namespace, the settings it made


class Subcommands(argparse._SubParsersAction):
    """Sub-commands of a command that also runs alone (`profile` and `profile validate`).

    Flags do not cross over: the command's own flags given before a sub-command,
    or a sub-command's flags given to the command alone, are a usage error.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        preset = getattr(namespace, PRESET_SETTINGS, {})  # a preset's settings are not flags given (e.g. `search --preset paper build-table`)
        set_flags = [a.option_strings[0] for a in parser._actions if hasattr(a, "library_default") and hasattr(namespace, a.dest)
                     and not (a.dest in preset and getattr(namespace, a.dest) == preset[a.dest])]
        if set_flags:
            parser.error(f"{', '.join(set_flags)}: a flag of `{parser.prog}` alone; the flags of `{values[0]}` go after it")
        super().__call__(parser, namespace, values, option_string)

    def refuse_their_flags(self, parent: argparse.ArgumentParser) -> None:
        """Give `parent` each flag only a sub-command has, as an error naming that sub-command."""
        for name, sub in self.choices.items():
            for flag in (f for a in sub._actions for f in a.option_strings if f not in parent._option_string_actions):
                parent.add_argument(flag, nargs="*", action=Misplaced, sub=f"{parent.prog} {name}", dest=argparse.SUPPRESS, help=argparse.SUPPRESS)


class Misplaced(argparse.Action):
    """A sub-command's flag given to its parent command."""

    def __init__(self, option_strings, dest, sub: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.sub = sub

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is a flag of `{self.sub}`")


def default_of(source, name: str):
    """The value of field `name` of a dataclass instance, the default of a dataclass's field or of a function's parameter."""
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        return getattr(source, name)
    if dataclasses.is_dataclass(source):
        field = {f.name: f for f in dataclasses.fields(source)}[name]
        if field.default is not dataclasses.MISSING:
            return field.default
        return None if field.default_factory is dataclasses.MISSING else field.default_factory()
    default = inspect.signature(source).parameters[name].default
    return None if default is inspect.Parameter.empty else default


def option(p: argparse.ArgumentParser, source, flag: str, **kwargs) -> argparse.Action:
    """A flag for the field (or parameter) of `source` its name spells; not given, the library's default applies."""
    action = p.add_argument(flag, default=argparse.SUPPRESS, **kwargs)
    action.library_default = default_of(source, action.dest)
    return action


def given(args: argparse.Namespace, source) -> dict:
    """The settings of `source` (a dataclass or a function) that the command line gave."""
    names = {f.name for f in dataclasses.fields(source)} if dataclasses.is_dataclass(source) else set(inspect.signature(source).parameters)
    return {k: v for k, v in vars(args).items() if k in names}


def typed(parse, what):
    """An argparse type from a library parser (`units.parse_count` ...), its error without the flag's name twice."""

    def convert(text):
        try:
            return parse(text, what)
        except MerinoError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{what}: ")) from None

    convert.__name__ = what
    return convert


def numbers(cast):
    """An argparse type for a comma-separated list of numbers."""

    def convert(text):
        try:
            return tuple(cast(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None

    return convert
