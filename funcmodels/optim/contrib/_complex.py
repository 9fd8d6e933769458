"""Complex params as pairs of real ones, as optax.contrib's ``split_real_and_imaginary``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from .._base import GradientTransformation, as_transformation, check_state


class SplitRealAndImaginaryArrays(NamedTuple):
    """A complex leaf as its real and imaginary parts (what the inner transformation of
    :func:`split_real_and_imaginary` sees)."""

    real: torch.Tensor
    """the real part"""
    imaginary: torch.Tensor
    """the imaginary part"""


class SplitRealAndImaginaryState(NamedTuple):
    """The state of :func:`split_real_and_imaginary`."""

    inner_state: Any
    """the inner transformation's state, over the split params"""


def _split(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_complex():
        return SplitRealAndImaginaryArrays(x.real.clone(), x.imag.clone())
    return x


def _join(x: Any) -> Any:
    if isinstance(x, SplitRealAndImaginaryArrays):
        return torch.complex(x.real, x.imaginary)
    return x


def split_real_and_imaginary(inner: GradientTransformation) -> GradientTransformation:
    """Run ``inner`` on the real and imaginary parts of complex leaves as two real leaves
    (optax.contrib's): Adam's second moment, for one, is then kept per part.

    Arguments:
        inner: the transformation of the real leaves.

    Returns:
        A GradientTransformation; its state is a :class:`SplitRealAndImaginaryState`.

    Raises:
        TypeError: ``inner`` is not a transformation.
    """
    where = "fm.optim.contrib.split_real_and_imaginary"
    inner = as_transformation(where, "inner", inner)

    def init(params):
        return SplitRealAndImaginaryState(inner.init(pytree.tree_map(_split, params)))

    def update(updates, state, params=None):
        check_state(state, SplitRealAndImaginaryState, where)
        updates = pytree.tree_map(_split, updates)
        params = None if params is None else pytree.tree_map(_split, params)
        updates, inner_state = inner.update(updates, state.inner_state, params)
        joined = pytree.tree_map(
            _join, updates, is_leaf=lambda x: isinstance(x, SplitRealAndImaginaryArrays)
        )
        return joined, SplitRealAndImaginaryState(inner_state)

    return GradientTransformation(init, update)
