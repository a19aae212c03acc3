"""The runtime imports and generates with torch and transformers made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_pulls_in_no_torch():
    done = run_python('import merino_edge.runtime, sys; assert "torch" not in sys.modules and "transformers" not in sys.modules, sorted(sys.modules)')
    assert done.returncode == 0, done.stderr


def test_generate_with_torch_unimportable(tiny_bundle):
    done = run_python(
        BLOCK_TORCH
        + f"""
from merino_edge.runtime import Generator, SamplingParams
generator = Generator.from_bundle({str(tiny_bundle)!r}, "auto", threads=1)
print(generator.generate("Hello", SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)).completion_tokens)
try:
    import torch
except ImportError:
    print("torch blocked")
"""
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "torch", "blocked"]
