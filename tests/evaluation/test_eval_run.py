"""`merino-edge eval`: the report table and JSON, and one-line errors when data is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from shared_paths import EVAL_FIXTURES

from merino_edge.cli import main
from merino_edge.errors import InputError
from merino_edge.evaluation.run import EvalReport
from merino_edge.evaluation.tasks import PAPER_TASKS, TASKS, task_names


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.delenv("MERINO_EDGE_EVAL_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_eval_prints_a_table_beside_the_paper_and_writes_json(tiny_bundle, tmp_path, capsys, offline):
    out = tmp_path / "eval.json"
    code = main(["eval", str(tiny_bundle), "--tasks", "cb,lambada", "--limit", "6", "--data-dir", str(EVAL_FIXTURES), "--backend", "ort", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr", "n", "paper", "MeRino-61M"]
    cb_acc = next(line for line in lines if line.split()[:2] == ["cb", "acc"])
    assert cb_acc.split()[-1] == "0.3750"  # Table 2, MeRino-61M
    report = EvalReport.from_json(json.loads(out.read_text()))
    assert [(r.task, r.metric) for r in report.rows] == [("cb", "acc"), ("cb", "f1"), ("lambada_openai", "perplexity"), ("lambada_openai", "acc")]
    assert all(r.samples == 6 for r in report.rows)
    assert 0 <= report.value("cb") <= 1 and report.value("lambada_openai", "perplexity") > 1
    assert report.source == f"local:{EVAL_FIXTURES}" and report.backend == "ort"


def test_eval_without_data_or_network_exits_2_with_one_line(tiny_bundle, capsys, offline):
    assert main(["eval", str(tiny_bundle), "--tasks", "copa"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--data-dir" in err and "MERINO_EDGE_EVAL_DATA" in err


def test_eval_names_the_missing_file_of_a_data_dir(tiny_bundle, tmp_path, capsys, offline):
    (tmp_path / "copa").mkdir()
    assert main(["eval", str(tiny_bundle), "--tasks", "copa,piqa", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "copa" / "copa.jsonl") in err


def test_environment_variable_points_at_the_data(tiny_bundle, monkeypatch, capsys, offline):
    monkeypatch.setenv("MERINO_EDGE_EVAL_DATA", str(EVAL_FIXTURES))
    assert main(["eval", str(tiny_bundle), "--tasks", "copa", "--limit", "3", "--backend", "ort"]) == 0
    assert "copa" in capsys.readouterr().out


def test_task_names_expand_groups_and_reject_unknown_names():
    assert task_names("paper") == list(PAPER_TASKS)
    assert task_names("copa,arc,copa") == ["copa", "arc_easy", "arc_challenge"]
    assert task_names("all") == list(TASKS)
    with pytest.raises(InputError, match="unknown task 'squad'"):
        task_names("copa,squad")


NO_TORCH = """
import importlib.machinery, sys

class NotInstalled(importlib.machinery.PathFinder):
    '''torch and transformers look uninstalled, as on a board.'''

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            return None
        return super().find_spec(name, path, target)

sys.meta_path = [NotInstalled if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def test_eval_runs_on_a_machine_without_torch(tiny_bundle):
    code = NO_TORCH + f"from merino_edge.evaluation.run import evaluate\nprint(evaluate({str(tiny_bundle)!r}, 'copa', 'ort', 4, {str(EVAL_FIXTURES)!r}).value('copa'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0.0 <= float(done.stdout.split()[-1]) <= 1.0
