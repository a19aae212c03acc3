"""The on-board runtime: backends, KV-cache generation and sampling (never torch or transformers).

    from merino_edge.runtime import Generator, SamplingParams, create_backend
    from merino_edge.bundle import Bundle
    from merino_edge.tokenizer import Tokenizer

    bundle = Bundle.load("bundle/")
    generator = Generator(create_backend(bundle), Tokenizer(bundle.tokenizer_path))
    print(generator.generate("Once upon a time", SamplingParams(max_tokens=32, temperature=0)).text)
"""

from merino_edge.runtime.backend import Backend, create_backend
from merino_edge.runtime.generator import Completion, Generator, Piece, Timings
from merino_edge.runtime.sampling import SamplingParams

__all__ = ["Backend", "Completion", "Generator", "Piece", "SamplingParams", "Timings", "create_backend"]
