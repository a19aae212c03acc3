"""Tables 1 and 4 of the paper at a proxy study's scale, trained exactly as that study trains.

Table 1 (depth against width at equal parameters): one unshared block of the
space's largest width at depth 1 ('wide') against one unshared block of its
smallest width at the depth whose parameters come closest to the wide model's
('deep'), FFN ratio 4 both (the paper: L = 1, E = 256 against L = 24, E = 64).
The paper finds the wide model better although its raw entropy is lower; the
effectiveness term gamma of Eq. 15 is what ranks it first.

Table 4 (weight sharing at equal FLOPs): the space's maximum-entropy
architecture under the study's budget (what `search` picks there), with the
layers of each block sharing one set of weights and with their own.  The paper
finds that sharing costs almost no loss.

`run_pairs(study_dir, out)` reads the study's config, trains the four models
with its recipe, tokenizer and token shards, and writes:

    results.jsonl        one line per trained model (a killed run resumes: finished models are kept)
    models/<name>/       checkpoints
    pairs.json, pairs.md
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from merino_edge.arch import ArchSpec, Block
from merino_edge.errors import InputError
from merino_edge.fileio import write_json_atomic
from merino_edge.search.budgets import Costs
from merino_edge.search.exact import solve_exact
from merino_edge.search.objective import Objective
from merino_edge.search.space import SearchSpace
from merino_edge.training.study import (
    CONFIG_FILE,
    MODELS_DIR,
    RESULTS_FILE,
    StudyConfig,
    append_result,
    read_results,
    tokenizer_path,
    train_arch,
)
from merino_edge.training.study_report import arch_cell

PAIRS = {"table1": ("wide", "deep"), "table4": ("shared", "unshared")}


def pair_archs(cfg: StudyConfig) -> dict[str, ArchSpec]:
    """The four architectures, by name, in the study's vocabulary, projection dim and positions."""
    space = SearchSpace(cfg.axes, cfg.blocks, cfg.vocab_size, cfg.proj_dim, cfg.max_positions)
    wide = space.make_arch((Block(max(cfg.axes.widths), 4.0, 1),))
    wide = dataclasses.replace(wide, shared=False)
    narrow = min(cfg.axes.widths)
    deeps = [dataclasses.replace(space.make_arch((Block(narrow, 4.0, depth),)), shared=False) for depth in range(1, 65)]
    deep = min(deeps, key=lambda a: abs(a.params() - wide.params()))
    best = solve_exact(space, cfg.objective(), Costs(space, cfg.budget))
    shared = space.to_arch(best.genome)
    return {"wide": wide, "deep": deep, "shared": shared, "unshared": dataclasses.replace(shared, shared=False)}


def describe(arch: ArchSpec, cfg: StudyConfig) -> dict:
    """The training-free numbers of one model: sizes, the raw entropy, gamma and Eq. 15."""
    raw = Objective((1.0, 1.0), 0.0, cfg.eps)
    terms = cfg.objective().breakdown(arch)
    return {
        "params": arch.params(),
        "flops": arch.flops(cfg.budget.flops_seq_len).count(cfg.budget.flops_convention),
        "entropy": raw(arch),
        "gamma_mha": max(t.gamma_mha for t in terms),
        "entropy_eq15": sum(t.score for t in terms),
    }


def run_pairs(
    study_dir: str | Path, out: str | Path, *, device: str | None = None, seed: int | None = None, resume: bool = False, progress: bool = True
) -> str:
    """Train the pairs with the study's recipe (see the module docstring); returns pairs.md's text.

    `seed` replaces the study's init and data-order seed: the same pairs again show the run-to-run spread.
    """
    from tqdm import tqdm

    study_dir, out = Path(study_dir), Path(out)
    if not (study_dir / CONFIG_FILE).is_file():
        raise InputError(f"study pairs: {study_dir} holds no study ({CONFIG_FILE} missing); run `merino-edge study proxy` first")
    cfg = StudyConfig.from_json(json.loads((study_dir / CONFIG_FILE).read_text())["config"])
    cfg = dataclasses.replace(cfg, device=device or cfg.device, seed=cfg.seed if seed is None else seed, progress=progress)
    if (out / RESULTS_FILE).is_file() and not resume:
        raise InputError(f"study pairs: {out} already holds results; pass --resume to continue or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    archs = pair_archs(cfg)
    results = read_results(out / RESULTS_FILE)
    tokenizer = tokenizer_path(cfg, study_dir)
    for name in tqdm([n for n in archs if n not in results], desc="paper pairs", unit="model", disable=not progress):
        record = train_arch(cfg, archs[name], out / MODELS_DIR / name, tokenizer, study_dir, name)
        record.update(describe(archs[name], cfg))
        append_result(out / RESULTS_FILE, record)
        results[name] = record
    recipe = {k: v for k, v in cfg.to_json().items() if k not in ("data", "out", "device", "progress")}  # no local paths
    write_json_atomic(out / "pairs.json", {"recipe": recipe, "models": [results[n] for n in archs]})
    text = pairs_table(results, cfg)
    (out / "pairs.md").write_text(text + "\n")
    return text


def pairs_table(results: dict[str, dict], cfg: StudyConfig) -> str:
    """Markdown: both tables with the paper's columns, and what each pair says."""
    lines = [
        f"Trained as the proxy study trains: {cfg.tokens:,} tokens each, sequence {cfg.seq_len}, batch {cfg.batch_tokens:,} tokens, "
        f"lr {cfg.lr:g}, seed {cfg.seed}; vocabulary {cfg.vocab_size}, projection dim {cfg.proj_dim}. "
        "Entropy: Eq. 15 with alpha = (1, 1) and beta = 0; gamma = beta L / log2 E (the MHA term); "
        f"Eq. 15: alpha = {cfg.alpha}, beta = {cfg.beta:g}.",
        "",
        "| table | model | arch | shared | params | FLOPs | entropy | gamma | Eq. 15 | val loss | val ppl | wall s |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for table, names in PAIRS.items():
        for name in names:
            r = results[name]
            a = ArchSpec.from_json(r["arch"])
            lines.append(
                f"| {table} | {name} | {arch_cell(a.short())} | {'yes' if a.shared else 'no'} | {r['params'] / 1e6:.3f}M | {r['flops'] / 1e9:.2f}G | "
                f"{r['entropy']:.0f} | {r['gamma_mha']:.3f} | {r['entropy_eq15']:.0f} | {r['val_loss']:.4f} | {math.exp(r['val_loss']):.2f} | {r['elapsed_s']:.0f} |"
            )
    wide, deep, shared, unshared = (results[n] for n in ("wide", "deep", "shared", "unshared"))
    better = "wide" if wide["val_loss"] < deep["val_loss"] else "deep"
    ranks_raw = "deep" if deep["entropy"] > wide["entropy"] else "wide"
    ranks_eq15 = "wide" if wide["entropy_eq15"] > deep["entropy_eq15"] else "deep"
    cost = 100 * (shared["val_loss"] - unshared["val_loss"]) / unshared["val_loss"]
    lines += [
        "",
        f"Table 1: the {better} model trains to the lower loss ({wide['val_loss']:.4f} wide, {deep['val_loss']:.4f} deep); "
        f"the raw entropy ranks the {ranks_raw} model first, Eq. 15 the {ranks_eq15} model. "
        f"The paper's finding (wide better, raw entropy higher for deep, gamma fixing the order) is "
        f"{'reproduced' if (better, ranks_raw, ranks_eq15) == ('wide', 'deep', 'wide') else 'not reproduced'} here.",
        f"Table 4: sharing changes the loss by {cost:+.2f} % ({shared['val_loss']:.4f} shared, {unshared['val_loss']:.4f} unshared) "
        f"with {shared['params'] / unshared['params']:.0%} of the parameters at equal FLOPs (the paper: +0.1 % to +1.0 % of Pile test loss).",
    ]
    return "\n".join(lines)
