"""jevons: serve open MoE reasoning models at the lowest cost per token."""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # OpenMP workers (PyTorch's and jevons's C kernels share one pool) spin
    # this long before sleeping. libgomp's default (300k spins) lets them fall
    # asleep in the Python gaps between a decode step's ~300 small parallel
    # ops, and each wake-up costs more than the op: measured on SmolLM2-135M,
    # 2 threads, int4 batch-1 decode 18.0 -> 14.2 ms per step, batch 32
    # 61.3 -> 55.9. Only read when libgomp starts, hence before torch loads;
    # an explicit GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
    if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
        _os.environ["GOMP_SPINCOUNT"] = "30000000"

from jevons.outputs import CompletionOutput, Logprob, RequestOutput
from jevons.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Importing the engine pulls in torch; keep `import jevons` light for the CLI.
    if name == "LLM":
        from jevons.llm import LLM

        return LLM
    raise AttributeError(name)
