"""optax's numerical helpers: ``power_iteration``, ``matrix_inverse_pth_root``, ``nnls``
and ``multi_normal``, with optax's arguments and arithmetic (random draws from fm keys)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

from .. import random as fm_random

# optax's ``precision`` (jax.lax.Precision) as torch's float32 matmul precision
_PRECISIONS = {"highest": "highest", "high": "high", "default": "medium"}


@contextlib.contextmanager
def _matmul_precision(where: str, precision: Any) -> Iterator[None]:
    name = str(getattr(precision, "name", precision)).lower()
    if name not in _PRECISIONS:
        raise ValueError(
            f"{where}: precision must be one of {sorted(_PRECISIONS)}, got {precision!r}"
        )
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(_PRECISIONS[name])
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _norm(tree: Any) -> torch.Tensor:
    leaves = pytree.tree_leaves(tree)
    return torch.sqrt(sum((leaf * leaf).sum() for leaf in leaves))


def _vdot(a: Any, b: Any) -> torch.Tensor:
    pairs = zip(pytree.tree_leaves(a), pytree.tree_leaves(b), strict=True)
    return sum((x * y).sum() for x, y in pairs)


def _scale(s: torch.Tensor, tree: Any) -> Any:
    return pytree.tree_map(lambda t: s * t, tree)


def _normalize(tree: Any) -> Any:
    return _scale(1.0 / _norm(tree), tree)


def _residual_norm(z: Any, eig: torch.Tensor, eigvec: Any) -> torch.Tensor:
    return _norm(pytree.tree_map(lambda a, b: a - eig * b, z, eigvec))


def power_iteration(
    matrix: torch.Tensor | Callable[[Any], Any],
    *,
    v0: Any = None,
    num_iters: int = 100,
    error_tolerance: float = 1e-6,
    precision: str = "highest",
    key: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any]:
    """The dominant eigenvalue of a diagonalizable matrix and its eigenvector, by power
    iteration, as optax's.

    The matrix is a tensor or a function computing a matrix-vector product over a
    pytree. Iterates until the relative residual ``|A v - lambda v| / lambda`` is below
    ``error_tolerance`` or ``num_iters`` products were made.

    Arguments:
        matrix: a square ``(n, n)`` tensor, or a function ``v -> A v`` over pytrees.
        v0: the starting vector (``(n,)``, or a pytree as the function takes); by
            default uniform in ``[-1, 1]`` drawn from ``key`` (a tensor matrix only).
        num_iters: the most iterations.
        error_tolerance: the relative residual at which to stop.
        precision: optax's matmul precision, ``"highest"``, ``"high"`` or ``"default"``
            (or a ``jax.lax.Precision``); torch's float32 matmul precision during the call.
        key: an fm key (``fm.random.key``) for ``v0``; default ``fm.random.key(0)``. The
            draws are fm's, not JAX's, so a default ``v0`` differs from optax's.

    Returns:
        ``(eigenvalue, eigenvector)``: a 0-dim tensor and a unit vector (or pytree).

    Raises:
        ValueError: ``matrix`` is a function and ``v0`` is missing, or a bad precision.
    """
    where = "fm.optim.power_iteration"
    if callable(matrix) and not isinstance(matrix, torch.Tensor):
        mvp = matrix
        if v0 is None:
            raise ValueError(f"{where}: v0 must be provided when `matrix` is a callable")
    else:
        matrix = torch.as_tensor(matrix)

        def mvp(v):
            return matrix @ v

        if v0 is None:
            key = fm_random.key(0) if key is None else key
            v0 = fm_random.uniform(
                key, matrix.shape[-1:], matrix.dtype, matrix.device, minval=-1.0, maxval=1.0
            )
    with _matmul_precision(where, precision):
        eigvec = _normalize(v0)
        z = mvp(eigvec)
        eig = torch.zeros((), dtype=pytree.tree_leaves(z)[0].dtype)
        for _ in range(int(num_iters)):
            if abs(float(_residual_norm(z, eig, eigvec) / eig)) < error_tolerance:
                break
            eigvec = _normalize(z)
            z = mvp(eigvec)
            eig = _vdot(eigvec, z)
    return eig, _normalize(z)


def _mat_power(m: torch.Tensor, p: float) -> torch.Tensor:
    """``m ** 2**round(log2(p))`` with the exponent clamped to 1..8: optax's unrolled
    powers (which give ``p = 3`` the fourth power, as optax does)."""
    exponent = min(max(round(math.log2(p)), 0), 3)
    for _ in range(exponent):
        m = m @ m
    return m


def matrix_inverse_pth_root(
    matrix: torch.Tensor,
    p: int,
    num_iters: int = 100,
    ridge_epsilon: float = 1e-6,
    error_tolerance: float = 1e-6,
    precision: str = "highest",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``matrix ** (-1/p)`` for a symmetric positive semi-definite matrix, by coupled
    Newton iterations (Higham, Functions of Matrices, eq. 7.18), as optax's.

    The matrix is damped by ``ridge_epsilon`` times its largest eigenvalue (from
    :func:`power_iteration` with its default start). ``-1/p`` is rounded to float32 as
    optax does, and the iteration's matrix power is optax's (``2**round(log2(p))``).

    Arguments:
        matrix: a symmetric PSD ``(n, n)`` tensor.
        p: the root, a positive integer (1, 2, 4 or 8 are exact).
        num_iters: the most iterations.
        ridge_epsilon: the relative ridge added to the diagonal.
        error_tolerance: the error ``max|M - I|`` at which to stop.
        precision: as :func:`power_iteration`'s.

    Returns:
        ``(root, error)``: the ``(n, n)`` root in ``matrix``'s dtype and the final error
            (0-dim; a 0 for a ``1 x 1`` matrix).

    Raises:
        ValueError: a matrix that is not square.
    """
    where = "fm.optim.matrix_inverse_pth_root"
    matrix = torch.as_tensor(matrix)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{where}: expected a square matrix, got shape {tuple(matrix.shape)}")
    n = matrix.shape[0]
    alpha = torch.tensor(-1.0 / p, dtype=torch.float32)
    # optax's identity is float32 and JAX promotes it with the matrix: torch would not
    # promote a 0-dim float64 against it, so it is made in the promoted dtype here
    dtype = torch.promote_types(matrix.dtype, torch.float32)
    identity = torch.eye(n, dtype=dtype, device=matrix.device)
    max_ev, _ = power_iteration(matrix, num_iters=100, error_tolerance=1e-6, precision=precision)
    ridge = ridge_epsilon * torch.clamp(max_ev, min=1e-16)
    if n == 1:
        return (matrix + ridge) ** alpha, torch.zeros(())
    with _matmul_precision(where, precision):
        return _coupled_newton(matrix, ridge, alpha, identity, p, num_iters, error_tolerance)


def _coupled_newton(matrix, ridge, alpha, identity, p, num_iters, error_tolerance):
    damped = matrix + ridge * identity
    z = (1 + p) / (2 * torch.linalg.norm(damped))
    mat_m = damped * z
    error = (mat_m - identity).abs().max()
    mat_h = old_h = identity * torch.pow(z, 1.0 / p)
    run_step, i = True, 0
    # optax's (1 - alpha) * identity is a float32 product
    lead = ((1 - alpha) * identity.to(torch.float32)).to(identity.dtype)
    while i < num_iters and run_step and bool(error > error_tolerance):
        mat_m_i = lead + alpha * mat_m
        new_m = _mat_power(mat_m_i, p) @ mat_m
        mat_h, old_h = mat_h @ mat_m_i, mat_h
        new_error = (new_m - identity).abs().max()
        # the error may grow before it shrinks: up to 1.2x is allowed, as optax's
        run_step = bool(new_error < error * 1.2)
        mat_m, error, i = new_m, new_error, i + 1
    error = (mat_m - identity).abs().max()
    root = mat_h if run_step else old_h
    return root.to(matrix.dtype), error


def _spectral_radius_upper_bound(q: torch.Tensor) -> torch.Tensor:
    fro = torch.linalg.matrix_norm(q, ord="fro")
    one = torch.linalg.matrix_norm(q, ord=1) if q.numel() else torch.zeros((), dtype=q.dtype)
    return torch.minimum(fro, one)


def nnls(
    A: torch.Tensor,  # noqa: N803 (optax's argument names)
    b: torch.Tensor,
    iters: int,
    unroll: int | bool = 1,
    L: torch.Tensor | float | None = None,  # noqa: N803
) -> torch.Tensor:
    """Non-negative least squares, ``min |A x - b|`` subject to ``x >= 0``, by Polyak's
    fast projected gradient (2015), as optax's.

    Arguments:
        A: the ``(M, N)`` matrix.
        b: an ``(M,)`` vector or an ``(M, K)`` matrix.
        iters: the number of iterations.
        unroll: optax's ``lax.scan`` unrolling; a plain loop here, so it changes nothing
            (checked to be an int or a bool).
        L: an upper bound on the spectral radius of ``A.mT @ A`` (default: the smaller
            of its Frobenius and 1-norms).

    Returns:
        The ``(N,)`` (or ``(N, K)``) solution.

    Raises:
        ValueError: shapes that do not fit.
        TypeError: ``unroll`` not an int or a bool.
    """
    where = "fm.optim.nnls"
    A, b = torch.as_tensor(A), torch.as_tensor(b)  # noqa: N806
    if A.dim() != 2 or b.dim() not in (1, 2) or b.shape[0] != A.shape[0]:
        raise ValueError(
            f"{where}: expected A of shape (M, N) and b of shape (M,) or (M, K), got "
            f"{tuple(A.shape)} and {tuple(b.shape)}"
        )
    if not isinstance(unroll, int):
        raise TypeError(f"{where}: unroll must be an int or a bool, got {unroll!r}")
    Q, q = A.mT @ A, A.mT @ b  # noqa: N806
    L = _spectral_radius_upper_bound(Q) if L is None else torch.as_tensor(L, dtype=Q.dtype)  # noqa: N806
    L = torch.where(L == 0, torch.ones_like(L), L)  # noqa: N806 (no division by zero)
    x = torch.zeros(A.shape[-1:] + b.shape[1:], dtype=b.dtype, device=b.device)
    p, c = x, torch.zeros((), dtype=torch.float64)
    for _ in range(iters):
        cn = (1 + torch.sqrt(1 + 4 * c**2)) / 2
        s = (c - 1) / cn
        xn = (p - (Q @ p - q) / L).clamp(min=0)
        p = xn + s.to(xn.dtype) * (xn - x)
        x, c = xn, cn
    return x


class MultiNormalDiagFromLogScale:
    """A normal distribution with a diagonal scale given by its log, as optax's.

    Arguments:
        loc: the mean.
        log_scale: the log of the standard deviation (broadcast against ``loc``).
    """

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor):
        self._log_scale = torch.as_tensor(log_scale)
        self._scale = torch.exp(self._log_scale)
        self._mean = torch.as_tensor(loc)
        self._param_shape = torch.broadcast_shapes(self._mean.shape, self._scale.shape)

    def sample(self, shape: Sequence[int], key: torch.Tensor) -> torch.Tensor:
        """Draw samples.

        Arguments:
            shape: the leading sample shape.
            key: an fm key (``fm.random.key``); the draws are fm's, not JAX's.

        Returns:
            A tensor of shape ``shape + param_shape``.
        """
        sample_shape = tuple(shape) + tuple(self._param_shape)
        dtype = torch.promote_types(self._mean.dtype, self._scale.dtype)
        noise = fm_random.normal(key, sample_shape, dtype, self._mean.device)
        return noise * self._scale + self._mean

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The log density of ``x``, summed over the parameter axes.

        Arguments:
            x: a tensor whose trailing shape is the parameters'.

        Returns:
            The log densities, of ``x``'s leading shape.
        """
        # jax.scipy.stats.norm.logpdf's formula, term for term
        log_normalizer = torch.log(2 * math.pi * self._scale**2)
        log_prob = (log_normalizer + ((x - self._mean) / self._scale) ** 2) / -2
        dims = [-(i + 1) for i in range(len(self._param_shape))]
        return log_prob.sum(dim=dims) if dims else log_prob

    @property
    def log_scale(self) -> torch.Tensor:
        """The log of the standard deviation."""
        return self._log_scale

    @property
    def params(self) -> list[torch.Tensor]:
        """``[mean, log_scale]``."""
        return [self._mean, self._log_scale]


def multi_normal(loc: torch.Tensor, log_scale: torch.Tensor) -> MultiNormalDiagFromLogScale:
    """A diagonal normal distribution from its mean and the log of its scale, as optax's.

    Arguments:
        loc: the mean.
        log_scale: the log of the standard deviation.

    Returns:
        A ``MultiNormalDiagFromLogScale`` with ``sample(shape, key)`` (fm keys),
            ``log_prob(x)``, ``log_scale`` and ``params``.
    """
    return MultiNormalDiagFromLogScale(loc=loc, log_scale=log_scale)
