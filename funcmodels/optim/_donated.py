"""An opt-in AdamW that writes into the params and its state (they are "donated", as JAX
says of buffers a step may reuse), on torch's fused kernel.

For large models in eager mode, where a functional step's fresh params, moments and
updates cost memory traffic that an in-place step does not: one pass of
``torch._fused_adamw_`` over each leaf, the same numbers as
``torch.optim.AdamW(fused=True)``, bitwise. It is not a :class:`GradientTransformation`:
``step`` changes its arguments, so it refuses to run inside ``torch.func`` transforms
(``vmap`` over an ensemble, ``grad``), where :func:`adamw` is the optimiser to use.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch._C._functorch import maybe_current_level

from ._base import Scalar, check_state, flatten, flatten_like, is_schedule, number


class DonatedAdamWState(NamedTuple):
    """The state of :class:`DonatedAdamW`, updated in place by its ``step``."""

    step: torch.Tensor
    """updates done, a 0-dim float32 tensor on the params' device (torch's fused AdamW
    keeps its step this way)"""
    mu: Any
    """first-moment estimates, a pytree like the params"""
    nu: Any
    """second-moment estimates, a pytree like the params"""


class DonatedAdamW:
    """AdamW on ``torch._fused_adamw_``, writing into the params and the state.

    Build it with :func:`donated_adamw`. ``init(params)`` makes the state (zeros);
    ``step(grads, state, params)`` updates ``params`` and ``state`` in place and returns
    them. The gradients are only read.

    Arguments:
        learning_rate (float | Callable[[torch.Tensor], Any]): a number, or a schedule of
            the step count.
        b1 (float): the decay rate of the first moment, in ``[0, 1)``.
        b2 (float): the decay rate of the second moment, in ``[0, 1)``.
        eps (float): added to the denominator, outside the square root.
        weight_decay (float): the decoupled weight decay coefficient.
    """

    def __init__(self, learning_rate, b1, b2, eps, weight_decay):
        where = "fm.optim.donated_adamw"
        self._lr = number(where, "learning_rate", learning_rate, schedule=True)
        if isinstance(self._lr, torch.Tensor):
            raise TypeError(f"{where}: learning_rate must be a number or a schedule")
        self._b1 = float(number(where, "b1", b1, below=1.0))
        self._b2 = float(number(where, "b2", b2, below=1.0))
        self._eps = float(number(where, "eps", eps))
        self._wd = float(number(where, "weight_decay", weight_decay))

    def init(self, params: Any) -> DonatedAdamWState:
        """Zero moments like ``params`` and a zero step count."""
        leaves = pytree.tree_leaves(params)
        device = leaves[0].device if leaves else None
        zeros = pytree.tree_map(torch.zeros_like, params)
        return DonatedAdamWState(
            torch.zeros((), dtype=torch.float32, device=device),
            zeros,
            pytree.tree_map(torch.zeros_like, params),
        )

    def step(self, grads: Any, state: DonatedAdamWState, params: Any) -> tuple[Any, Any]:
        """One AdamW step written into ``params`` and ``state``.

        Arguments:
            grads: gradients like ``params``, of the params' dtypes.
            state: from :meth:`init` (then from the previous step).
            params: the params (a pytree of tensors), changed in place.

        Returns:
            ``(params, state)``: the objects given, their tensors updated.

        Raises:
            ValueError: inside a ``torch.func`` transform, or trees that do not match.
            TypeError: a state from another optimiser, gradients of another dtype.
        """
        where = "fm.optim.donated_adamw"
        if maybe_current_level() is not None or torch.compiler.is_compiling():
            raise ValueError(
                f"{where}: writes into the params and its state, in eager mode only: not "
                "inside torch.func transforms (vmap over an ensemble, grad) or "
                "torch.compile; use fm.optim.adamw there"
            )
        check_state(state, DonatedAdamWState, where)
        ps, spec = flatten(params)
        gs = flatten_like(grads, spec, "grads")
        mus = flatten_like(state.mu, spec, "first moments")
        nus = flatten_like(state.nu, spec, "second moments")
        bad = [i for i, (p, g) in enumerate(zip(ps, gs, strict=True)) if p.dtype != g.dtype]
        if bad:
            raise TypeError(
                f"{where}: the fused kernel needs gradients of the params' dtype; leaf "
                f"{bad[0]} is {ps[bad[0]].dtype} with {gs[bad[0]].dtype} gradients"
            )
        with torch.no_grad():
            lr = self._lr(state.step.to(torch.int64)) if is_schedule(self._lr) else self._lr
            state.step.add_(1)
            self._run(ps, gs, mus, nus, state.step, float(lr))
        return params, state

    def _run(self, ps, gs, mus, nus, step, lr: float) -> None:
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(ps):
            groups.setdefault((p.device, p.dtype), []).append(i)
        for (device, _), idx in groups.items():
            steps = [step.to(device)] * len(idx)
            torch._fused_adamw_(
                [ps[i] for i in idx],
                [gs[i] for i in idx],
                [mus[i] for i in idx],
                [nus[i] for i in idx],
                [],
                steps,
                lr=lr,
                beta1=self._b1,
                beta2=self._b2,
                weight_decay=self._wd,
                eps=self._eps,
                amsgrad=False,
                maximize=False,
            )


def donated_adamw(
    learning_rate: Scalar,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
) -> DonatedAdamW:
    """AdamW written into the params and its state, on torch's fused kernel (opt-in).

    The same numbers as ``torch.optim.AdamW(params, learning_rate, (b1, b2), eps,
    weight_decay, fused=True)`` fed the same gradients (bitwise), and as :func:`adamw` up
    to rounding; eager mode only (it refuses to run inside ``vmap`` or ``grad``).

    Arguments:
        learning_rate: a number, or a schedule of the step count (read on the host once
            per step, as ``torch.optim.lr_scheduler`` does).
        b1: the decay rate of the first moment, in ``[0, 1)``.
        b2: the decay rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator, outside the square root.
        weight_decay: the decoupled weight decay coefficient (a number).

    Returns:
        A :class:`DonatedAdamW`: ``state = opt.init(params)``, then ``params, state =
            opt.step(grads, state, params)`` each step.
    """
    return DonatedAdamW(learning_rate, b1, b2, eps, weight_decay)
