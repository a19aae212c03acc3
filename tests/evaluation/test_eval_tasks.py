"""Local task definitions: every file of ../shared/eval loads, and prompts match lm-eval's own task YAML."""

from __future__ import annotations

from pathlib import Path

import lm_eval.tasks
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml
from shared_paths import EVAL

from merino_edge.evaluation.tasks import TASKS, local_task_config, macro_f1

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
# Item counts of the local eval sets (one file per task).
COUNTS = {
    "hellaswag": 10042, "winogrande": 1267, "openbookqa": 500, "boolq": 3270, "wic": 638, "cb": 56, "rte": 277, "pubmedqa": 500,
    "logiqa": 651, "lambada_openai": 5153, "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "copa": 100,
}  # fmt: skip
# lm-eval's own YAML of every task.
YAMLS = {
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "wic": "super_glue/wic/default.yaml",
    "cb": "super_glue/cb/default.yaml",
    "rte": "super_glue/rte/default.yaml",
    "pubmedqa": "pubmedqa/pubmedqa.yaml",
    "logiqa": "logiqa/logiqa.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
    "piqa": "piqa/piqa.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "copa": "super_glue/copa/default.yaml",
}


def _task(config: dict) -> ConfigurableTask:
    return ConfigurableTask(config=config)


def _requests(task: ConfigurableTask, n: int) -> list[list[tuple]]:
    """The (context, continuation) pairs lm-eval would send the model for the first n items, zero-shot."""
    out = []
    for doc in list(task.eval_docs)[:n]:
        requests = task.construct_requests(doc, task.fewshot_context(doc, 0))
        out.append([r.args for r in (requests if isinstance(requests, list) else [requests])])
    return out


@pytest.mark.parametrize("name", list(COUNTS))
def test_every_local_file_loads_with_the_readme_counts(name):
    assert len(TASKS[name].load(EVAL / TASKS[name].file)) == COUNTS[name]


def test_every_task_falls_back_to_the_hub_task_of_the_same_questions():
    assert set(YAMLS) == set(TASKS)
    assert {name: load_yaml(LM_EVAL_TASKS / path)["task"] for name, path in YAMLS.items()} == {name: t.hub_task for name, t in TASKS.items()}


# Local records carry the hub dataset's fields for all but these two (see merino_edge/evaluation/tasks.py).
@pytest.mark.parametrize("name", sorted(set(YAMLS) - {"hellaswag", "winogrande"}))
def test_requests_equal_those_of_lm_evals_own_task_yaml(name):
    ours = _task(local_task_config(name, EVAL))
    theirs = load_yaml(LM_EVAL_TASKS / YAMLS[name])
    theirs = {k: v for k, v in theirs.items() if k not in ("dataset_path", "dataset_name", "tag", "metric_list")}
    theirs.update(custom_dataset=ours.config.custom_dataset, test_split="test", training_split=None, validation_split=None)
    assert _requests(ours, 5) == _requests(_task(theirs), 5)


def test_hellaswag_and_winogrande_prompts_read_like_lm_evals():
    hellaswag = _requests(_task(local_task_config("hellaswag", EVAL)), 1)[0]
    assert hellaswag[0] == ("Roof shingle removal: A man is sitting on a roof. He", " is using wrap to wrap a pair of skis.")
    winogrande = _requests(_task(local_task_config("winogrande", EVAL)), 1)[0]
    assert winogrande == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    ]


def test_cb_f1_is_the_mean_of_per_class_f1():
    # (prediction, gold): class 0 has tp 1, fp 1, fn 1 -> 1/2; class 1 tp 1, fn 1 -> 2/3; class 2 is never right -> 0.
    assert macro_f1([(0, 0), (0, 1), (1, 1), (2, 0)]) == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert macro_f1([(0, 0), (1, 1), (2, 2)]) == 1.0


def test_pubmedqa_is_not_grouped_by_answer_so_limit_takes_a_fair_slice():
    first = [doc["final_decision"] for doc in TASKS["pubmedqa"].load(EVAL / TASKS["pubmedqa"].file)[:100]]
    assert set(first) == {"yes", "no", "maybe"}
