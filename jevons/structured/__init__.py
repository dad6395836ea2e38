"""Grammar-constrained decoding: compiling constraints (backend.py) and the
per-sequence matcher state the engine keeps (manager.py). The runner only
applies the token bitmasks it is given (runner/sampler.py)."""
from jevons.structured.backend import GrammarBackend, GrammarError
from jevons.structured.manager import StructuredOutputManager

__all__ = ["GrammarBackend", "GrammarError", "StructuredOutputManager"]
