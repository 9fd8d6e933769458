"""A mixture of experts over any expert spec, vectorised: ``transforms.MoE``.

Each token (every leading position of the input ``(..., D)``) is routed by a gate to its
``top_k`` experts; the output is the weighted sum of those experts' outputs. The experts
are ``fm.nn.Stack(expert, E)``: their params stacked on a leading axis (``experts.0.weight``
of shape ``(E, ...)``), run at once.

Two dispatches, the same result:

* **sorted, dropless** (``capacity_factor=None``, in eager mode and under ``grad``, ``vjp``
  or ``jacrev``, which do not batch the routing): the assignments are sorted
  by expert (a stable argsort), each expert runs on its contiguous group of tokens (a loop
  over the ``E`` groups, not over tokens; one host sync for the group sizes), and the
  results are added back, weighted;
* **capacity** (under ``vmap`` or ``torch.compile``, or with ``capacity_factor``):
  static shapes only. Each assignment gets a slot in its expert's buffer of ``C`` rows by a
  cumulative sum over ``(idx[:, None] == arange(E))`` (first choices of every token before
  second choices, earlier tokens first); the ``(E, C, D)`` buffer goes through the stacked
  experts in one lifted ``vmap`` and the results are gathered back. ``C = ceil(c * T * k /
  E)`` with a capacity factor ``c`` (assignments past it are dropped: they add 0), else
  ``C = T``, where nothing can overflow.

Sown auxiliary outputs (``fm.run(...).aux[path]``): ``load_balance_loss`` =
``E * sum_e f_e * P_e`` (``f_e`` the share of assignments to ``e``, ``P_e`` the mean over
tokens of the softmax over all ``E`` logits; 1.0 at perfect balance), ``z_loss`` = the mean
over tokens of ``logsumexp(logits)**2``, ``expert_counts`` (assignments per expert,
int64) and ``dropped_fraction``. :func:`moe_aux_loss` sums the weighted losses of every
MoE layer of a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

import funcmodels as fm
from funcmodels.extend import layer_error, positive_int, under_vmap

from ._routing import route

__all__ = ["MoE", "moe_aux_loss"]


def _first_linear_width(spec: fm.Spec) -> int | None:
    """The input width of the first ``Linear`` of ``spec`` (in parameter order), if any."""
    for _, s in spec.walk():
        if isinstance(s, fm.nn.Linear):
            return s.in_features
    return None


@dataclasses.dataclass(frozen=True)
class MoE(fm.Spec):
    """A top-k mixture of experts; see the module docstring for the dispatch.

    Arguments:
        expert: the spec of one expert, width-preserving: ``(D,) -> (D,)`` per token (any
            spec: an MLP, a residual block...).
        num_experts: ``E``.
        top_k: experts per token, in ``[1, E]``.
        gate: a spec mapping ``(D,)`` to ``(E,)`` logits (the seed article's MLP gate, say);
            ``None`` for ``Linear(D, E, bias=False)``.
        normalize: ``True``: the mixing weights are the softmax over the ``k`` chosen
            logits (the seed article, Mixtral); ``False``: the softmax over all ``E``, the
            chosen weights not rescaled (Switch, OLMoE).
        capacity_factor: ``None`` for dropless routing; ``c > 0``: each expert takes at most
            ``ceil(c * T * k / E)`` of the ``T * k`` assignments of one call.
        jitter: in train mode, multiply the gate's input by uniform noise in
            ``[1 - jitter, 1 + jitter)`` drawn from the layer's key (Switch's router
            jitter); ``0`` turns it off.
        dim: the width ``D``; inferred from the expert's first ``Linear`` when left out, or
            from the input shape given to ``fm.init``.

    Shapes: input ``(..., D)``, output the same; the tokens of one call are all its
    leading positions (under ``vmap``, those of one example). Children: ``gate`` and
    ``experts`` (``Stack(expert, E, in_axis=0)``); a state_dict with the experts unstacked,
    ``experts.{i}.<name>`` (an ``nn.ModuleList``, as the seed article's), loads with
    ``fm.from_state_dict``.
    """

    preserves_rank: ClassVar[bool] = True
    inferred_fields: ClassVar[tuple[str, ...]] = ("dim",)

    expert: fm.Spec
    num_experts: int
    top_k: int = 2
    gate: fm.Spec | None = None
    normalize: bool = True
    capacity_factor: float | None = None
    jitter: float = 0.0
    dim: int | None = None

    def __post_init__(self):
        if not isinstance(self.expert, fm.Spec):
            raise TypeError(f"MoE: expert must be a layer spec, got {type(self.expert).__name__}")
        e = positive_int("MoE", "num_experts", self.num_experts)
        k = positive_int("MoE", "top_k", self.top_k)
        if k > e:
            raise ValueError(
                f"MoE: top_k={k} exceeds num_experts={e}; each token picks distinct experts"
            )
        if self.gate is not None and not isinstance(self.gate, fm.Spec):
            raise TypeError(
                f"MoE: gate must be a layer spec or None, got {type(self.gate).__name__}"
            )
        if not isinstance(self.normalize, bool):
            raise TypeError(f"MoE: normalize must be a bool, got {self.normalize!r}")
        c = self.capacity_factor
        if c is not None:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
                raise TypeError(f"MoE: capacity_factor must be None or a finite number, got {c!r}")
            if c <= 0:
                raise ValueError(
                    f"MoE: capacity_factor must be positive (or None for dropless), got {c}"
                )
            object.__setattr__(self, "capacity_factor", float(c))
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, (int, float)) or not 0 <= j < 1:
            raise ValueError(f"MoE: jitter must be a number in [0, 1), got {j!r}")
        object.__setattr__(self, "jitter", float(j))
        if self.dim is None:
            object.__setattr__(self, "dim", _first_linear_width(self.expert))
        if self.dim is not None:
            positive_int("MoE", "dim", self.dim)
        gate = self.gate
        if gate is None:
            gate = fm.nn.Linear(self.dim, e, bias=False)
        object.__setattr__(
            self, "_children", (("gate", gate), ("experts", fm.nn.Stack(self.expert, e, in_axis=0)))
        )
        if self.dim is not None:
            self._check_widths(gate)

    def _check_widths(self, gate: fm.Spec) -> None:
        """The gate must give ``E`` logits and an expert keep the width: checked on shapes."""
        d, e = self.dim, self.num_experts
        for what, spec, want in (("the gate", gate, (e,)), ("an expert", self.expert, (d,))):
            try:
                got = spec.out_shape((d,), "", None)
            except TypeError:
                continue  # a spec without shape rules: checked when it runs
            except ValueError as err:
                raise ValueError(f"MoE: {what} does not take tokens of width {d}: {err}") from None
            if tuple(got) != want:
                role = "one logit per expert" if what == "the gate" else "experts keep the width"
                raise ValueError(
                    f"MoE: {what} maps ({d},) to {tuple(got)}, expected {want} ({role})"
                )

    def children(self):
        return self._children

    # -- shapes -----------------------------------------------------------------------------
    def resolve(self, in_shape, path: str = ""):
        last = in_shape[-1] if in_shape else None
        dim = self.dim if self.dim is not None else last
        if dim is None or dim is ...:
            return self
        # The width fills the experts' and the gate's omitted sizes too (one token (D,)).
        expert = self.expert.resolve((dim,), f"{path}experts.")
        gate = None if self.gate is None else self.gate.resolve((dim,), f"{path}gate.")
        if dim == self.dim and expert is self.expert and gate is self.gate:
            return self
        return dataclasses.replace(self, dim=dim, expert=expert, gate=gate)

    def out_shape(self, in_shape, path: str = "", record: dict | None = None):
        if not in_shape or (
            in_shape[-1] not in (None, ...) and self.dim is not None and in_shape[-1] != self.dim
        ):
            raise layer_error(
                self,
                path,
                f"expected tokens of width {self.dim} (input (..., {self.dim})), got {in_shape}",
            )
        return in_shape

    # -- computation ----------------------------------------------------------------------
    def forward(self, ctx: fm.Context, x: torch.Tensor) -> torch.Tensor:
        tokens, top_idx, weights = route(self, ctx, x)
        # The sorted dispatch needs the group sizes on the host: fine in eager mode and
        # under grad/vjp/jvp (a transform that does not batch the routing), not under vmap
        # (each example has its own sizes) or compile (static shapes).
        if self.capacity_factor is None and ctx.mode != "compile" and not under_vmap(top_idx):
            out = self._dropless(ctx, tokens, top_idx, weights)
            dropped = torch.zeros((), device=x.device)
        else:
            out, dropped = self._capacity(ctx, tokens, top_idx, weights)
        ctx.sow("dropped_fraction", dropped)
        return out.reshape(x.shape)

    def _dropless(self, ctx, tokens, top_idx, weights):
        """Sort the assignments by expert, run each expert on its group, add back."""
        k = self.top_k
        flat = top_idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // k
        sizes = torch.bincount(flat, minlength=self.num_experts).tolist()
        groups = list(torch.split(tokens.index_select(0, token), sizes))
        results = torch.cat(ctx.apply("experts", groups))
        w = weights.reshape(-1).index_select(0, order)
        return torch.zeros_like(tokens).index_add(0, token, results * w[:, None])

    def _capacity(self, ctx, tokens, top_idx, weights):
        """Static-shape dispatch through an ``(E, C, D)`` buffer (see the module docstring)."""
        t, d = tokens.shape
        e, k = self.num_experts, self.top_k
        cap = t if self.capacity_factor is None else math.ceil(self.capacity_factor * t * k / e)
        # k-major: every token's first choice claims a slot before any second choice.
        flat = top_idx.t().reshape(-1)
        onehot = (flat[:, None] == torch.arange(e, device=tokens.device)).to(torch.int64)
        pos = (torch.cumsum(onehot, 0) * onehot).sum(-1) - 1
        keep = pos < cap
        slot = torch.where(keep, flat * cap + pos, torch.full_like(flat, e * cap))
        token = torch.arange(k * t, device=tokens.device) % t
        src = tokens.index_select(0, token)
        buffer = torch.zeros(e * cap + 1, d, dtype=tokens.dtype, device=tokens.device).index_add(
            0, slot, src
        )
        out = ctx.apply("experts", buffer[: e * cap].view(e, cap, d))
        rows = torch.cat(
            [out.reshape(e * cap, d), torch.zeros(1, d, dtype=out.dtype, device=out.device)]
        )
        w = weights.t().reshape(-1) * keep.to(weights.dtype)
        combined = (rows.index_select(0, slot) * w[:, None]).view(k, t, d).sum(0)
        dropped = (
            1.0 - keep.to(torch.float32).mean() if t else torch.zeros((), device=tokens.device)
        )
        return combined, dropped


def moe_aux_loss(
    aux: Mapping[str, Mapping[str, Any]], *, load_balance: float = 1e-2, z_loss: float = 1e-3
) -> torch.Tensor:
    """The weighted auxiliary losses of every MoE layer in ``fm.run(...).aux``.

    ``load_balance * load_balance_loss + z_loss * z_loss`` summed over the MoE layers (and
    over any leading axes the values gained, under a Stack); the defaults are Switch's and
    ST-MoE's coefficients.

    Arguments:
        aux: ``fm.run(...).aux``, the sown values by layer path.
        load_balance: the weight of each MoE layer's ``load_balance_loss``.
        z_loss: the weight of each MoE layer's ``z_loss`` (the router's logit penalty).

    Returns:
        a 0-dim tensor (``0.`` for a model without MoE layers), to add to the task loss.

    Raises:
        TypeError: ``aux`` is not a mapping.
    """
    if not isinstance(aux, Mapping):
        raise TypeError(
            f"transforms.moe_aux_loss: expected fm.run(...).aux, got {type(aux).__name__}"
        )
    total = torch.zeros(())
    for values in aux.values():
        if "load_balance_loss" in values:
            total = (
                total
                + load_balance * values["load_balance_loss"].sum()
                + z_loss * values["z_loss"].sum()
            )
    return total


fm.register_layer("moe", MoE)
