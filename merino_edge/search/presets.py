"""Named settings of `merino-edge search`.

`paper` is the paper's own search (Sec. 4.1 and Table 5): its vocabulary
(50,272, the GPT-2/OPT tokenizer of its Pile models), projection dim 768,
2,048 positions, N = 4 blocks of Table 5, T / M / K = 100 000 / 512 / 64,
alpha = (0.6, 0.4), beta = 1/16, and FLOPs counted as the paper counts them.
Keys are the search's setting names (the CLI's flag names with `_`).
"""

from __future__ import annotations

from merino_edge.arch import TABLE5

PRESETS = {
    "paper": {
        "vocab_size": 50272,
        "proj_dim": 768,
        "max_positions": 2048,
        "blocks": 4,
        "widths": TABLE5.widths,
        "ratios": TABLE5.ratios,
        "depths": TABLE5.depths,
        "iterations": 100_000,
        "population": 512,
        "parents": 64,
        "alpha": (0.6, 0.4),
        "beta": 1 / 16,
        "flops_convention": "paper",
    },
}
