"""The proxy study's report: rank correlations of training-free proxies with trained quality.

The correlations come from `merino_edge.rank_correlation`.  A proxy is good when it
ranks architectures like their trained quality does, which is measured as
-validation loss (higher is better, like the paper's -perplexity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from merino_edge.fileio import check_schema

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Correlation:
    proxy: str
    spearman: float
    kendall: float


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
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StudyReport:
        check_schema(data, "study report", SCHEMA_VERSION)
        rest = {k: v for k, v in data.items() if k not in ("correlations", "sensitivity")}
        return cls(
            **rest,
            correlations=[Correlation(**c) for c in data["correlations"]],
            sensitivity=[Sensitivity(**s) for s in data["sensitivity"]],
        )

    def tables(self) -> str:
        """Markdown: the proxies ranked against -validation loss, then the entropy's grid."""
        lines = [
            f"{self.archs} architectures, {self.budget}, {self.tokens_per_arch:,} training tokens each; "
            "rank correlation with -validation loss (higher is better)",
            "",
            "| proxy | Spearman rho | Kendall tau |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {c.proxy} | {c.spearman:.3f} | {c.kendall:.3f} |" for c in self.correlations]
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
    if proxy != "entropy" and min(x) > 0:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
