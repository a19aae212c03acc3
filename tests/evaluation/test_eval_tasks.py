"""Local task definitions: every task file loads, and prompts match lm-eval's own task YAML.

The prompt checks run on the six-item fixtures of every task; the counts and
ordering checks want the full evaluation sets beside the repo.
"""

from __future__ import annotations

from pathlib import Path

import lm_eval.tasks
import pytest
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml
from shared_paths import EVAL, EVAL_FIXTURES

from merino_edge.evaluation.tasks import TASKS, local_task_config, macro_f1

LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
# Item counts of the full evaluation sets.
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


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(COUNTS))
def test_every_full_file_loads_with_its_item_count(name):
    assert len(TASKS[name].load(EVAL / TASKS[name].file)) == COUNTS[name]


@pytest.mark.parametrize("name", list(COUNTS))
def test_every_fixture_file_loads_in_the_same_layout(name):
    assert len(TASKS[name].load(EVAL_FIXTURES / TASKS[name].file)) == 6


def test_every_task_falls_back_to_the_hub_task_of_the_same_questions():
    assert set(YAMLS) == set(TASKS)
    assert {name: load_yaml(LM_EVAL_TASKS / path)["task"] for name, path in YAMLS.items()} == {name: t.hub_task for name, t in TASKS.items()}


# Local records carry the hub dataset's fields for all but these two (see merino_edge/evaluation/tasks.py).
@pytest.mark.parametrize("name", sorted(set(YAMLS) - {"hellaswag", "winogrande"}))
def test_requests_equal_those_of_lm_evals_own_task_yaml(name):
    ours = _task(local_task_config(name, EVAL_FIXTURES))
    theirs = load_yaml(LM_EVAL_TASKS / YAMLS[name])
    theirs = {k: v for k, v in theirs.items() if k not in ("dataset_path", "dataset_name", "tag", "metric_list")}
    theirs.update(custom_dataset=ours.config.custom_dataset, test_split="test", training_split=None, validation_split=None)
    assert _requests(ours, 5) == _requests(_task(theirs), 5)


def test_hellaswag_and_winogrande_prompts_read_like_lm_evals():
    hellaswag = _requests(_task(local_task_config("hellaswag", EVAL_FIXTURES)), 3)
    assert hellaswag[0][0] == ("Making tea: A woman fills a kettle with water. She", " puts the kettle on the stove.")
    assert hellaswag[2][0] == ("Washing a car: A man sprays the car with a hose. Then he", " plants the hose.")
    winogrande = _requests(_task(local_task_config("winogrande", EVAL_FIXTURES)), 1)[0]
    assert winogrande == [
        ("The trophy did not fit in the case because the trophy", " was too big."),
        ("The trophy did not fit in the case because the case", " was too big."),
    ]


@pytest.mark.shared_data
def test_the_full_hellaswag_and_winogrande_files_read_like_lm_evals():
    hellaswag = _requests(_task(local_task_config("hellaswag", EVAL)), 1)[0]
    assert hellaswag[0] == ("Roof shingle removal: A man is sitting on a roof. He", " is using wrap to wrap a pair of skis.")
    winogrande = _requests(_task(local_task_config("winogrande", EVAL)), 1)[0]
    assert winogrande[1] == ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")


def test_cb_f1_is_the_mean_of_per_class_f1():
    # (prediction, gold): class 0 has tp 1, fp 1, fn 1 -> 1/2; class 1 tp 1, fn 1 -> 2/3; class 2 is never right -> 0.
    assert macro_f1([(0, 0), (0, 1), (1, 1), (2, 0)]) == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert macro_f1([(0, 0), (1, 1), (2, 2)]) == 1.0


@pytest.mark.shared_data
def test_pubmedqa_is_not_grouped_by_answer_so_limit_takes_a_fair_slice():
    first = [doc["final_decision"] for doc in TASKS["pubmedqa"].load(EVAL / TASKS["pubmedqa"].file)[:100]]
    assert set(first) == {"yes", "no", "maybe"}
