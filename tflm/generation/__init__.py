"""Text generation: samplers and the compiled, cached decode loop behind `GPT.generate`."""

from tflm.generation.decode import generate, make_decode_loop, stream
from tflm.generation.samplers import Beam, Greedy, PerRow, Random, Sampler, TopK, TopP

__all__ = [
    "Beam", "Greedy", "PerRow", "Random", "Sampler", "TopK", "TopP",
    "generate", "make_decode_loop", "stream",
]
