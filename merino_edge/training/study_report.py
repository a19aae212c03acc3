"""The proxy study's report: rank correlations of training-free proxies with trained quality.

The correlations come from `merino_edge.rank_correlation`.  A proxy is good when it
ranks architectures like their trained quality does, which is measured as
-validation loss (higher is better, like the paper's -perplexity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from merino_edge.fileio import check_schema

SCHEMA_VERSION = 2

# What each proxy is, for the report (names as in merino_edge.training.study.PROXIES).
PROXY_NOTES = {
    "entropy": "Eq. 15: effectiveness-weighted entropy (alpha, beta as configured)",
    "entropy_no_gamma": "Eq. 15 without the effectiveness term (beta = 0)",
    "entropy_unweighted": "Eq. 15 with alpha = (1, 1)",
    "params": "unique parameters",
    "non_embedding_params": "decoder (non-embedding) parameters, LiteTransformerSearch's proxy",
    "flops": "forward FLOPs",
}


def arch_cell(short: str) -> str:
    """An architecture's short form (`ArchSpec.short`) as a Markdown table cell: its blocks joined by commas."""
    return short.replace(" | ", ", ")


@dataclass(frozen=True)
class Correlation:
    """One proxy against -validation loss: rank correlations, their bootstrap intervals, and its top pick."""

    proxy: str
    spearman: float
    kendall: float
    spearman_interval: tuple[float, float] = (float("nan"), float("nan"))
    kendall_interval: tuple[float, float] = (float("nan"), float("nan"))
    top_pick: str = ""  # the id of the architecture the proxy scores highest
    top_pick_rank: int = 0  # its place among the trained models by validation loss (1 = best)


@dataclass(frozen=True)
class Sensitivity:
    """The entropy proxy's correlations at one (eps, alpha_1, beta); alpha_2 = 1 - alpha_1."""

    eps: float
    alpha1: float
    beta: float
    spearman: float
    kendall: float


@dataclass
class StudyReport:
    """The proxy study's result: one correlation per proxy, and the entropy's sensitivity grid."""

    archs: int
    budget: str
    tokens_per_arch: int
    correlations: list[Correlation] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    sampled: int = 0  # architectures the study sampled (more than `archs` while it runs)
    bootstrap_samples: int = 0
    models: list[dict] = field(default_factory=list)  # per architecture: id, arch, proxies, val_loss, tokens, elapsed_s
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StudyReport:
        check_schema(data, "study report", SCHEMA_VERSION)
        rest = {k: v for k, v in data.items() if k not in ("correlations", "sensitivity")}
        return cls(
            **rest,
            correlations=[
                Correlation(**{**c, "spearman_interval": tuple(c["spearman_interval"]), "kendall_interval": tuple(c["kendall_interval"])})
                for c in data["correlations"]
            ],
            sensitivity=[Sensitivity(**s) for s in data["sensitivity"]],
        )

    def tables(self) -> str:
        """Markdown: the proxies ranked against -validation loss, then the entropy's grid."""
        done = f"{self.archs} of {self.sampled} sampled" if self.sampled > self.archs else f"{self.archs}"
        lines = [
            f"{done} architectures, {self.budget}, {self.tokens_per_arch:,} training tokens each; "
            f"rank correlation with -validation loss (higher is better), 95 % percentile bootstrap intervals over {self.bootstrap_samples} "
            "resamples of the architectures; top pick: where the architecture the proxy scores highest ranks by validation loss (1 = best)",
            "",
            "| proxy | Spearman rho [95 % CI] | Kendall tau [95 % CI] | top pick | what it is |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        lines += [
            f"| {c.proxy} | {c.spearman:.3f} [{c.spearman_interval[0]:.2f}, {c.spearman_interval[1]:.2f}] "
            f"| {c.kendall:.3f} [{c.kendall_interval[0]:.2f}, {c.kendall_interval[1]:.2f}] "
            f"| {c.top_pick_rank} of {self.archs} ({c.top_pick}) | {PROXY_NOTES.get(c.proxy, '')} |"
            for c in self.correlations
        ]
        if self.sensitivity:
            betas = sorted({s.beta for s in self.sensitivity}, reverse=True)
            alphas = sorted({s.alpha1 for s in self.sensitivity})
            for beta in betas:
                lines += ["", f"Entropy sensitivity, beta = {beta:g} (cells: Spearman rho / Kendall tau; alpha = (alpha1, 1 - alpha1))", ""]
                lines.append("| eps \\ alpha1 | " + " | ".join(f"{a:g}" for a in alphas) + " |")
                lines.append("| --- |" + " ---: |" * len(alphas))
                for eps in sorted({s.eps for s in self.sensitivity if s.beta == beta}):
                    cells = {s.alpha1: s for s in self.sensitivity if s.beta == beta and s.eps == eps}
                    lines.append(f"| {eps:g} | " + " | ".join(f"{cells[a].spearman:.3f} / {cells[a].kendall:.3f}" if a in cells else "-" for a in alphas) + " |")
        if self.models:
            lines += ["", "Per architecture (rank 1 = lowest validation loss; wall time of its training run, validation included)", ""]
            lines.append("| id | arch | params | FLOPs | entropy | val loss | rank | tokens | wall s | tokens/s |")
            lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            order = sorted(self.models, key=lambda m: m["val_loss"])
            rank = {m["id"]: i for i, m in enumerate(order, 1)}
            for m in self.models:
                p = m["proxies"]
                lines.append(
                    f"| {m['id']} | {arch_cell(m['arch'])} | {p['params'] / 1e6:.3f}M | {p['flops'] / 1e9:.2f}G | {p['entropy']:.0f} | {m['val_loss']:.4f} "
                    f"| {rank[m['id']]} | {m['tokens']:,} | {m['elapsed_s']:.0f} | {m['tokens_per_s']:,.0f} |"
                )
            wall = sum(m["elapsed_s"] for m in self.models)
            lines += ["", f"Training wall time, all {len(self.models)} architectures: {wall / 60:.1f} min ({wall / len(self.models):.0f} s each on average)."]
        return "\n".join(lines)


def scatter_plot(proxy: str, x, quality, correlation: Correlation, out_path: Path) -> Path:
    """One proxy against -validation loss, one dot per trained architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x, quality, s=18)
    ax.set_xlabel(proxy)
    ax.set_ylabel("-validation loss (nats/token)")
    ax.set_title(f"{proxy}: rho = {correlation.spearman:.3f}, tau = {correlation.kendall:.3f}")
    if not proxy.startswith("entropy") and min(x) > 0:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
