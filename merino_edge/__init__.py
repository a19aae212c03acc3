"""merino-edge: entropy-designed small language models, from search to serving on edge boards."""

__version__ = "0.1.0"
