"""Zero-shot tasks: the paper's nine (Table 2) and a few more, on local files or the hub.

Each task reads one file of an offline copy of the evaluation sets (laid out
like merino-edge's shared `eval/` folder: `DIR/copa/copa.jsonl`, ...), turns
its records into the fields of the Hugging Face dataset that lm-eval's own task
reads, and then prompts and scores them with that task's YAML (templates,
choices, metrics) mirrored here.  So a local run and a hub run of the same task
name ask the model the same questions.  Two files cannot give back the hub's
exact fields and are mapped as closely as they allow:

- HellaSwag: the local copy was cleaned as lm-eval's `process_docs` cleans
  and joins ctx_a and ctx_b; the loader finishes that step (query, choices,
  label), taking the last sentence as ctx_b when it starts lower-case so that
  lm-eval's `ctx_b.capitalize()` applies as it would on the hub.
- WinoGrande: the local copy keeps the two filled-in contexts, not the
  sentence with its blank; lm-eval's partial scoring (score the continuation
  after each context) is applied to them directly.

Without a data folder the same names resolve to lm-eval's hub tasks.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merino_edge.errors import InputError, MissingDependencyError

DATA_ENV = "MERINO_EDGE_EVAL_DATA"


@dataclass(frozen=True)
class TaskSpec:
    """One zero-shot task: where its local file lives and how lm-eval scores it."""

    name: str
    file: str  # relative to the data folder
    hub_task: str  # lm-eval's registered task of the same questions
    load: Callable[[Path], list[dict]]  # local file -> records in the hub dataset's fields
    config: dict  # lm-eval TaskConfig fields (prompts, choices, metrics)
    paper_61m: float | None = None  # MeRino-61M accuracy in the paper's Table 2


def _jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------- metrics

ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}


def macro_f1(items: list[tuple[int, int]]) -> float:
    """Mean over the three classes of the per-class F1 (lm-eval's `cb_multi_fi`, without sklearn)."""
    preds, golds = np.asarray(items).T
    scores = []
    for label in range(3):
        tp = np.sum((preds == label) & (golds == label))
        wrong = np.sum((preds == label) != (golds == label))  # false positives + false negatives
        scores.append(2 * tp / (2 * tp + wrong) if tp else 0.0)
    return float(np.mean(scores))


# ---------------------------------------------- local file -> hub fields


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _hellaswag(path: Path) -> list[dict]:
    """Records as lm-eval's hellaswag `process_docs` leaves them: query, choices, label."""
    docs = []
    for r in _jsonl(path):
        label, _, ctx = r["ctx"].partition(": ")
        head, dot, tail = ctx.rpartition(". ")
        ctx_a, ctx_b = (head + ".", tail) if dot and tail[:1].islower() else (ctx, "")
        query = _hellaswag_preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize())
        docs.append({"query": query, "choices": [_hellaswag_preprocess(e) for e in r["endings"]], "label": r["label"]})
    return docs


def _winogrande(path: Path) -> list[dict]:
    return [{"contexts": r["context_options"], "continuation": r["continuation"], "gold": int(r["gold"])} for r in _jsonl(path)]


def _openbookqa(path: Path) -> list[dict]:
    keys = "ABCD"
    return [
        {"question_stem": r["query"], "choices": {"text": r["choices"], "label": list(keys[: len(r["choices"])])}, "answerKey": keys[r["gold"]]}
        for r in _jsonl(path)
    ]


def _superglue(labels: tuple):
    """SuperGLUE validation jsonl with its label mapped to the hub's class index."""

    def load(path: Path) -> list[dict]:
        return [{**r, "label": labels.index(r["label"])} for r in _jsonl(path)]

    return load


def _pubmedqa(path: Path) -> list[dict]:
    """The 500 test items in PubMed-ID order (the jsonl is grouped by answer, which would bias --limit)."""
    docs = [{"QUESTION": r["question"], "CONTEXTS": r["context"].split("\n"), "final_decision": r["final_decision"]} for r in _jsonl(path)]
    ids = path.with_name("test_ground_truth.json")
    if ids.is_file():  # same order as the jsonl, keyed by PubMed ID
        pmids = [int(k) for k in json.loads(ids.read_text())]
        if len(pmids) == len(docs):
            docs = [doc for _, doc in sorted(zip(pmids, docs, strict=True), key=lambda pair: pair[0])]
    return docs


def _pubmedqa_text(doc: dict) -> str:
    return "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(doc["CONTEXTS"]), doc["QUESTION"])


_LOGIQA_QUERY = re.compile(r"Context: (.*)\nQuestion: (.*)\nChoices: A\. (.*)\nB\. (.*)\nC\. (.*)\nD\. (.*)\n", re.S)


def _logiqa(path: Path) -> list[dict]:
    docs = []
    for i, r in enumerate(_jsonl(path)):
        m = _LOGIQA_QUERY.fullmatch(r["query"])
        if not m:
            raise InputError(f"{path}: line {i + 1}: query is not 'Context: ...\\nQuestion: ...\\nChoices: A. ...' as expected")
        context, question, *options = m.groups()
        docs.append({"context": context, "question": question, "options": options, "label": "abcd"[r["gold"]]})
    return docs


def _logiqa_text(doc: dict) -> str:
    prompt = "Passage: " + doc["context"] + "\n" + "Question: " + doc["question"] + "\nChoices:\n"
    prompt += "".join(f"{key}. {option}\n" for key, option in zip("ABCD", doc["options"], strict=True))
    return prompt + "Answer:"


def _lambada(path: Path) -> list[dict]:
    return [{"text": r["context"] + " " + r["continuation"]} for r in _jsonl(path)]


def _piqa(path: Path) -> list[dict]:
    return [{"goal": r["query"].removeprefix("Question: ").removesuffix("\n"), "sol1": r["choices"][0], "sol2": r["choices"][1], "label": r["gold"]} for r in _jsonl(path)]


def _arc(path: Path) -> list[dict]:
    keys = "ABCDE"
    return [
        {"question": r["query"].removeprefix("Question: "), "choices": {"text": r["choices"], "label": list(keys[: len(r["choices"])])}, "answerKey": keys[r["gold"]]}
        for r in _jsonl(path)
    ]


def _copa(path: Path) -> list[dict]:
    docs = []
    for r in _jsonl(path):
        premise, connector = r["query"].rsplit(", ", 1)
        question = {"because": "cause", "therefore": "effect"}[connector]
        docs.append({"premise": premise + ".", "question": question, "choice1": r["choices"][0], "choice2": r["choices"][1], "label": r["gold"]})
    return docs


def _copa_choice(text: str) -> str:
    return " " + text[0].lower() + text[1:]


def _copa_text(doc: dict) -> str:
    return doc["premise"].strip()[:-1] + " " + {"cause": "because", "effect": "therefore"}[doc["question"]]


# ------------------------------------------------------------- the table

_MC = {"output_type": "multiple_choice"}
_ARC = {
    **_MC,
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{choices.label.index(answerKey)}}",
    "doc_to_choice": "{{choices.text}}",
    "metric_list": [ACC, ACC_NORM],
}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "hellaswag",
            "hellaswag/hellaswag_val.jsonl",
            "hellaswag",
            _hellaswag,
            {**_MC, "doc_to_text": "{{query}}", "doc_to_target": "{{label}}", "doc_to_choice": "choices", "metric_list": [ACC, ACC_NORM]},
            0.267,
        ),
        TaskSpec(
            "winogrande",
            "winogrande/winogrande.jsonl",
            "winogrande",
            _winogrande,
            {**_MC, "doc_to_text": lambda d: d["gold"], "doc_to_target": lambda d: d["continuation"], "doc_to_choice": lambda d: d["contexts"], "metric_list": [ACC]},
            0.516,
        ),
        TaskSpec(
            "openbookqa",
            "openbook_qa/openbook_qa.jsonl",
            "openbookqa",
            _openbookqa,
            {
                **_MC,
                "doc_to_text": "question_stem",
                "doc_to_target": "{{choices.label.index(answerKey.lstrip())}}",
                "doc_to_choice": "{{choices.text}}",
                "metric_list": [ACC, ACC_NORM],
            },
            0.128,
        ),
        TaskSpec(
            "boolq",
            "superglue_boolq/val.jsonl",
            "boolq",
            _superglue((False, True)),
            {**_MC, "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:", "doc_to_target": "label", "doc_to_choice": ["no", "yes"], "metric_list": [ACC]},
            0.617,
        ),
        TaskSpec(
            "wic",
            "superglue_wic/val.jsonl",
            "wic",
            _superglue((False, True)),
            {
                **_MC,
                "doc_to_text": "Sentence 1: {{sentence1}}\nSentence 2: {{sentence2}}\nQuestion: Is the word '{{sentence1[start1:end1]}}' used in the same way in the two sentences above?\nAnswer:",
                "doc_to_target": "label",
                "doc_to_choice": ["no", "yes"],
                "metric_list": [ACC],
            },
            0.500,
        ),
        TaskSpec(
            "cb",
            "superglue_cb/val.jsonl",
            "cb",
            _superglue(("entailment", "contradiction", "neutral")),
            {
                **_MC,
                "doc_to_text": "{{premise}}\nQuestion: {{hypothesis}}. True, False, or Neither?\nAnswer:",
                "doc_to_target": "label",
                "doc_to_choice": ["True", "False", "Neither"],
                "metric_list": [ACC, {"metric": "f1", "aggregation": macro_f1, "higher_is_better": True}],
            },
            0.375,
        ),
        TaskSpec(
            "rte",
            "superglue_rte/val.jsonl",
            "sglue_rte",
            _superglue(("entailment", "not_entailment")),
            {**_MC, "doc_to_text": "{{premise}}\nQuestion: {{hypothesis}} True or False?\nAnswer:", "doc_to_target": "label", "doc_to_choice": ["True", "False"], "metric_list": [ACC]},
            0.524,
        ),
        TaskSpec(
            "pubmedqa",
            "pubmedqa/pubmedqa_test.jsonl",
            "pubmedqa",
            _pubmedqa,
            {**_MC, "doc_to_text": _pubmedqa_text, "doc_to_target": "final_decision", "doc_to_choice": ["yes", "no", "maybe"], "metric_list": [ACC]},
            0.483,
        ),
        TaskSpec(
            "logiqa",
            "logi_qa/logi_qa.jsonl",
            "logiqa",
            _logiqa,
            {**_MC, "doc_to_text": _logiqa_text, "doc_to_target": lambda d: "abcd".index(d["label"]), "doc_to_choice": "{{options}}", "metric_list": [ACC, ACC_NORM]},
            0.214,
        ),
        TaskSpec(
            "lambada_openai",
            "lambada_openai/lambada_openai.jsonl",
            "lambada_openai",
            _lambada,
            {
                "output_type": "loglikelihood",
                "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
                "doc_to_target": "{{' '+text.split(' ')[-1]}}",
                "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}, ACC],
            },
        ),
        TaskSpec(
            "piqa",
            "piqa/piqa.jsonl",
            "piqa",
            _piqa,
            {**_MC, "doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label", "doc_to_choice": "{{[sol1, sol2]}}", "metric_list": [ACC, ACC_NORM]},
        ),
        TaskSpec("arc_easy", "arc_easy/arc_easy.jsonl", "arc_easy", _arc, _ARC),
        TaskSpec("arc_challenge", "arc_challenge/arc_challenge.jsonl", "arc_challenge", _arc, _ARC),
        TaskSpec(
            "copa",
            "copa/copa.jsonl",
            "copa",
            _copa,
            {
                **_MC,
                "doc_to_text": _copa_text,
                "doc_to_target": lambda d: _copa_choice(d["choice1"] if d["label"] == 0 else d["choice2"]),
                "doc_to_choice": lambda d: [_copa_choice(d["choice1"]), _copa_choice(d["choice2"])],
                "metric_list": [ACC],
            },
        ),
    )
}

PAPER_TASKS = ("hellaswag", "winogrande", "openbookqa", "boolq", "wic", "cb", "rte", "pubmedqa", "logiqa")
PAPER_61M_AVERAGE = 0.403
GROUPS = {"paper": PAPER_TASKS, "all": tuple(TASKS), "arc": ("arc_easy", "arc_challenge"), "lambada": ("lambada_openai",)}


def task_names(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand `hellaswag,copa` or `paper` / `all` / `arc` into task names, in order, once each."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        expanded = GROUPS.get(part, (part,))
        for name in expanded:
            if name not in TASKS:
                raise InputError(f"unknown task {name!r}; known: {', '.join(TASKS)} (or the groups {', '.join(GROUPS)})")
            if name not in names:
                names.append(name)
    if not names:
        raise InputError("no task given (e.g. --tasks hellaswag,copa or --tasks paper)")
    return names


def data_dir_from_env(data_dir: str | Path | None) -> Path | None:
    """`data_dir` if given, else $MERINO_EDGE_EVAL_DATA, else None."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    return Path(chosen) if chosen is not None else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub may be used: not marked offline and huggingface.co answers."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def local_task_config(name: str, data_dir: Path) -> dict:
    """The lm-eval task config of `name`, reading its file under `data_dir`."""
    spec = TASKS[name]
    path = data_dir / spec.file
    if not path.is_file():
        raise InputError(f"task {name}: no data at {path} (--data-dir must be laid out like merino-edge's eval folder: DIR/{spec.file})")
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError("merino-edge eval needs lm-evaluation-harness: pip install 'merino-edge[eval]'") from None

    def dataset(**_):
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(spec.load(path))})

    return {"task": name, "custom_dataset": dataset, "test_split": "test", "metadata": {"version": 1.0, "source": str(path)}, **spec.config}


def resolve(names: list[str], data_dir: str | Path | None) -> tuple[list[dict] | list[str], str]:
    """Task configs for a local data folder, or lm-eval hub task names when online.

    Returns (tasks, source) where source says where the data comes from.
    """
    folder = data_dir_from_env(data_dir)
    if folder is not None:
        if not folder.is_dir():
            raise InputError(f"evaluation data folder not found: {folder}")
        return [local_task_config(n, folder) for n in names], f"local:{folder}"
    if not hub_reachable():
        raise InputError(
            f"no evaluation data: pass --data-dir DIR or set {DATA_ENV} to a folder laid out like merino-edge's eval/ (e.g. DIR/copa/copa.jsonl), "
            "or go online so lm-eval can fetch the tasks from the Hugging Face hub"
        )
    return [TASKS[n].hub_task for n in names], "hub"
