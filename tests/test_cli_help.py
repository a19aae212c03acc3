"""Every command's --help works and shows each default once, taken from the config dataclass or library function."""

import argparse
import re

import pytest

from merino_edge.cli import build_parser, main
from merino_edge.profiling.run import ProfileConfig
from merino_edge.profiling.validate import ValidateConfig
from merino_edge.search.evolution import ITERATIONS, PARENTS, POPULATION
from merino_edge.search.objective import Objective
from merino_edge.training.study import StudyConfig


def commands(parser=None, prefix=()):
    """(argv prefix, parser) of every command and sub-command."""
    parser = parser or build_parser()
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*prefix, name))


def help_text(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def option_help(text: str, flag: str) -> str:
    """The help of one option: from the flag to the next option."""
    match = re.search(rf"(?:^| ){re.escape(flag)}\b(.*?)(?= --?[a-z]|$)", text.split(" options: ", 1)[-1])
    assert match, flag
    return match.group(1)


def test_every_command_has_help_and_no_default_is_shown_twice(capsys):
    seen = 0
    for argv, _ in commands():
        text = help_text(capsys, argv)
        assert "(default: None)" not in text
        for chunk in re.split(r" (?=--[a-z])", text):
            assert chunk.count("default") <= 1, (argv, chunk)
        seen += 1
    assert seen >= 18  # 15 commands, tokenizer train, study proxy, profile validate, search build-table


@pytest.mark.parametrize(
    ("argv", "flag", "default"),
    [
        (["profile"], "--calibration", ProfileConfig.calibration),
        (["profile"], "--backend", ProfileConfig.backend),
        (["profile", "validate"], "--archs", ValidateConfig.archs),
        (["profile", "validate"], "--contexts", " ".join(map(str, ValidateConfig.contexts))),
        (["search"], "--iterations", ITERATIONS),
        (["search"], "--population", POPULATION),
        (["search"], "--parents", PARENTS),
        (["search"], "--beta", Objective.beta),
        (["search"], "--alpha", ",".join(f"{a:g}" for a in Objective.alpha)),
        (["study", "proxy"], "--eps", StudyConfig.eps),
        (["study", "proxy"], "--seq-len", StudyConfig.seq_len),
    ],
)
def test_help_shows_the_library_default(capsys, argv, flag, default):
    assert f"(default: {default})" in option_help(help_text(capsys, argv), flag)
