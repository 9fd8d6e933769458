"""Counter-based pseudo-random numbers from explicit keys.

A key is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words. Every draw is a
pure function of the key: the bits come from Philox4x32-10 (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC'11) written in integer tensor ops, so

* the same key gives the same bits on every run, process and device;
* a batch of keys of shape ``(n, 2)`` works under :func:`torch.func.vmap`;
* the functions trace under :func:`torch.compile`;
* torch's global generator is never read or advanced.

Only integer arithmetic makes the bits, and float samples are built from them with exact
operations, so integer and ``[0, 1)`` uniform draws are bit-identical across devices.
"""

from . import _ops  # noqa: F401 (registers the operators used under compile)
from ._data import batches, categorical, choice, permutation
from ._philox import bits, check_key, fold_in, is_plain, key, split
from ._samplers import bernoulli, gumbel, normal, randint, truncated_normal, uniform

__all__ = [
    "batches",
    "bernoulli",
    "bits",
    "categorical",
    "check_key",
    "choice",
    "fold_in",
    "gumbel",
    "is_plain",
    "key",
    "normal",
    "permutation",
    "randint",
    "split",
    "truncated_normal",
    "uniform",
]
