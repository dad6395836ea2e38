"""Grammar-constrained decoding: compiling constraints (backend.py) and the
per-sequence matcher state the engine keeps (manager.py). The runner only
applies the token bitmasks it is given (runner/sampler.py)."""
from jevons.structured.contracts import GrammarError
from jevons.structured.manager import StructuredOutputManager

# backend.py (GrammarBackend, on xgrammar) is imported where it is used, so
# that importing the engine does not import xgrammar.
__all__ = ["GrammarError", "StructuredOutputManager"]
