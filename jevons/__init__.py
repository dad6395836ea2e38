"""jevons: serve open MoE reasoning models at the lowest cost per token."""
from jevons.outputs import CompletionOutput, Logprob, RequestOutput
from jevons.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Importing the engine pulls in torch; keep `import jevons` light for the CLI.
    if name == "LLM":
        from jevons.entrypoints import LLM

        return LLM
    raise AttributeError(name)
