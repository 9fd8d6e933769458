"""DP-SGD's clipped, summed gradient without per-example gradients where a layer has a
closed form: :func:`clipped_grad` (the method is in the docstring of :mod:`transforms.dp`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels.extend import tapping

from ._bounds import check_bounds
from ._rules import Rule, rule_for


@dataclass
class _Call:
    """One call of a layer with own params, in the order the model makes them."""

    path: str
    spec: fm.Spec
    names: dict[str, str]  # local param name -> name in the params
    rule: Rule | None
    out_shape: tuple[int, ...] = ()
    out_dtype: torch.dtype = torch.float32


def _find_calls(loss, params, example_args, kwargs) -> list[_Call]:
    """The calls a model makes for one example, found by running it on example 0 under
    ``vmap`` (the mode the real pass runs in, so data-dependent layers choose alike)."""
    flat = params.flat()
    by_id = {id(t): n for n, t in flat.items()}
    state = _state_of(kwargs)
    calls: list[_Call] = []

    def tap(ctx, x, out):
        own = ctx.own_params()
        if not own:
            return out
        names = {n: by_id.get(id(t)) for n, t in own.items()}
        rule = None
        if all(names.values()) and isinstance(out, torch.Tensor) and isinstance(x, torch.Tensor):
            prefix = f"{ctx.path}." if ctx.path else ""
            layer_state = {n[len(prefix) :]: v for n, v in state.items() if n.startswith(prefix)}
            rule = rule_for(ctx.spec, layer_state, tuple(x.shape))
        call = _Call(ctx.path, ctx.spec, names, rule)
        if isinstance(out, torch.Tensor):
            call.out_shape, call.out_dtype = tuple(out.shape), out.dtype
        calls.append(call)
        return out

    def one(*args):
        with tapping(tap):
            return _example_loss(loss, params, args, kwargs)

    with torch.no_grad():
        vmap(one, randomness="same")(*[_first(a) for a in example_args])
    # A param seen by two calls, or by a layer without a rule: formed per example.
    seen: dict[str, int] = {}
    for call in calls:
        for n in call.names.values():
            if n is not None:
                seen[n] = seen.get(n, 0) + 1
    for call in calls:
        if call.rule is not None and any(seen[n] > 1 for n in call.names.values()):
            call.rule = None
    return calls


def _state_of(kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    state = kwargs.get("state")
    return state.flat() if isinstance(state, fm.State) else {}


def _first(a: Any) -> Any:
    return a[:1] if isinstance(a, torch.Tensor) else a


def _example_loss(loss, params, args, kwargs) -> torch.Tensor:
    """The loss of one example (inputs without their batch dim) as a batch of one."""
    out = loss(params, *[a.unsqueeze(0) for a in args], **kwargs)
    if not isinstance(out, torch.Tensor) or out.shape != (1,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            "transforms.dp: the loss must return one loss per example, shape (B,) for a "
            f"batch of B (reduction='none'); for a batch of one it returned {got}"
        )
    return out[0]


def _groups(flat: Mapping[str, torch.Tensor], bounds: dict[str, float]) -> dict[str, int]:
    """Each param's clipping group: the index of the longest layer path of ``bounds`` that
    contains it (``''`` contains everything)."""
    keys = list(bounds)
    out, used = {}, set()
    for name in flat:
        best = None
        for i, k in enumerate(keys):
            if (k == "" or name == k or name.startswith(k + ".")) and (
                best is None or len(k) > len(keys[best])
            ):
                best = i
        if best is None:
            raise ValueError(
                f"transforms.dp.clipped_grad: the param {name!r} is in no clipping group of "
                f"max_norm (layer paths {keys}); add its layer, or '' for the rest"
            )
        out[name] = best
        used.add(best)
    unused = [k for i, k in enumerate(keys) if i not in used]
    if unused:
        raise ValueError(
            f"transforms.dp.clipped_grad: max_norm names {unused}, which hold no params of "
            "the model"
        )
    return out


def clipped_grad(
    loss: Callable[..., torch.Tensor],
    max_norm: float | Mapping[str, float] = 1.0,
) -> Callable[..., tuple[fm.Params, torch.Tensor]]:
    """Transform ``loss(params, *batch, **kwargs) -> (B,)`` into a function returning
    ``(grads, norms)``: ``grads`` like ``params``, the sum over examples of
    ``min(1, max_norm / (|g_i| + 1e-6)) * g_i`` (``g_i`` example ``i``'s gradient over all
    params together); ``norms (B,)`` the ``|g_i|``.

    Per-layer clipping: ``max_norm`` a mapping of layer paths to bounds, say ``{"0": 1.0,
    "2": 0.5}`` (``""`` for every param no other path holds): each example's gradient is
    clipped group by group, the params of a path (the longest path that holds them) to its
    bound, and the whole is bounded by :func:`total_norm` of the mapping, which is what to
    pass to :func:`add_noise`. ``norms`` stays the norm of the whole unclipped gradient.

    The batch arguments are tensors with the examples on dim 0 (inputs, labels, per-example
    weights); keyword arguments (``state=...`` for the model's buffers, say) are shared by
    all examples. The loss must compute each example's loss from that example alone: it
    is evaluated per example (a batch of one, under ``vmap``). A key passed as a keyword
    is therefore the same for every example (each draws the same dropout mask); for one
    mask per example pass ``fm.split(key, B)`` as a batch argument instead.

    An empty batch (``B = 0``, which Poisson sampling may draw) gives zero gradients and
    norms of shape ``(0,)``.

    The result equals ``vmap(grad)``, clipping and summing (tested to 1e-5 relative);
    layers with a closed form never have their per-example gradients formed.

    Arguments:
        loss: ``loss(params, *batch, **kwargs)`` returning the per-example losses, a
            tensor of shape ``(B,)``.
        max_norm: the clipping bound, a positive number, or per-layer bounds (a mapping
            of layer paths to positive numbers).

    Returns:
        A function of ``loss``'s arguments returning ``(grads, norms)``: ``grads`` a
            :class:`~funcmodels.Params` like ``params``, ``norms`` a tensor of shape
            ``(B,)``.

    Raises:
        TypeError: ``loss`` is not callable (at once), or the first argument is not
            Params (when called).
        ValueError: ``max_norm`` is not a valid bound.
    """
    if not callable(loss):
        raise TypeError(f"transforms.dp.clipped_grad: loss must be callable, got {loss!r}")
    bounds = check_bounds(max_norm, "clipped_grad")
    # The plan of the last call: the model's layers and rules depend only on the spec, the
    # example shapes and the state (a SparseLinear's mask), so a training loop plans once.
    plan: _Plan | None = None

    def clipped(params: fm.Params, *batch: Any, **kwargs: Any):
        nonlocal plan
        if not isinstance(params, fm.Params):
            raise TypeError(
                f"transforms.dp.clipped_grad: expected Params first, got {type(params).__name__}"
            )
        layout = _layout(batch, kwargs)
        if _batch_size(batch) == 0:  # an empty Poisson batch: nothing to clip or plan
            return _nothing(params)
        # Read once: a call in another thread may replace the shared plan meanwhile, and
        # this call must use the plan made for its own (spec, layout) key.
        mine = plan
        if mine is None or mine.spec is not params.spec or mine.layout != layout:
            mine = plan = _make_plan(loss, params, batch, kwargs, bounds, layout)
        per_group = [bounds] if mine.groups is None else list(bounds.values())
        return _clipped(loss, params, batch, kwargs, mine, per_group)

    return clipped


@dataclass
class _Plan:
    """What :func:`clipped_grad` works out once for a model and a batch layout."""

    spec: fm.Spec
    """the spec it was made for"""
    layout: tuple
    """the batch's layout it was made for (see :func:`_layout`)"""
    calls: list[_Call]
    """the model's calls, each with its closed form or ``None``"""
    groups: dict[str, int] | None
    """each param's clipping group (an index into the bounds); ``None``: one group"""
    held: tuple[list[Any], dict[str, Any]]
    """the objects whose ids are in ``layout``, referenced so that no id is reused"""


def _layout(batch: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple:
    """What a plan depends on besides the spec: each batch argument's per-example shape,
    dtype and device (or its id, for a non-tensor), and the ids of the keyword arguments."""
    sizes = {a.shape[0] for a in batch if isinstance(a, torch.Tensor) and a.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(
            "transforms.dp.clipped_grad: the batch arguments must be tensors with the "
            f"same number of examples on dim 0, got sizes {sorted(sizes)}"
        )
    shapes = tuple(
        (tuple(a.shape[1:]), a.dtype, a.device) if isinstance(a, torch.Tensor) else id(a)
        for a in batch
    )
    return (shapes, tuple(sorted((k, id(v)) for k, v in kwargs.items())))


def _make_plan(loss, params, batch, kwargs, bounds, layout) -> _Plan:
    calls = _find_calls(loss, params, batch, kwargs)
    groups = None
    if not isinstance(bounds, float):
        groups = _groups(params.flat(), bounds)
        for call in calls:  # a closed form clips a layer's params together
            gs = {groups[n] for n in call.names.values() if n is not None}
            if call.rule is not None and len(gs) > 1:
                call.rule = None
    held = ([a for a in batch if not isinstance(a, torch.Tensor)], dict(kwargs))
    return _Plan(params.spec, layout, calls, groups, held)


def _clipped(loss, params, batch, kwargs, plan: _Plan, bounds: list[float]):
    """The clipped, summed gradient and the per-example norms of one batch, in the three
    steps of the module docstring. ``bounds``: one per clipping group."""
    flat = {n: t.detach() for n, t in params.flat().items()}
    closed = [c for c in plan.calls if c.rule is not None]
    b = _batch_size(batch)
    g_probes, g_free, inputs = _per_example(
        loss, params.spec, flat, batch, kwargs, plan.calls, closed, b
    )
    group = (lambda name: 0) if plan.groups is None else plan.groups.__getitem__
    sq, finishers = _squared_norms(flat, closed, inputs, g_probes, g_free, group, len(bounds), b)
    norms = sum(sq[1:], sq[0]).sqrt()
    factors = [(c / (s.sqrt() + 1e-6)).clamp(max=1.0) for c, s in zip(bounds, sq, strict=True)]
    grads = _clipped_sum(flat, finishers, g_free, factors, group)
    return fm.Params(params.spec, grads), norms


def _batch_size(batch: tuple[Any, ...]) -> int:
    """The number of examples (dim 0 of the batch's tensors, checked alike by ``_layout``)."""
    return next(a.shape[0] for a in batch if isinstance(a, torch.Tensor) and a.dim() > 0)


def _nothing(params: fm.Params) -> tuple[fm.Params, torch.Tensor]:
    """What an empty batch gives: zero gradients and no norms ``(0,)``, in the dtype and
    on the device the norms of a non-empty batch have."""
    flat = params.flat()
    dtype = torch.float32
    for t in flat.values():
        dtype = torch.promote_types(dtype, t.dtype)
    zeros = {n: torch.zeros_like(t) for n, t in flat.items()}
    return fm.Params(params.spec, zeros), torch.zeros(0, dtype=dtype, device=_device(flat))


def _per_example(loss, spec, flat, batch, kwargs, calls, closed, b):
    """One pass, ``vmap`` over the examples of ``grad``: the gradients at zero probes added
    to the outputs of the closed-form calls ``(B, *out)``, the per-example gradients of
    every other param ``(B, *shape)``, and the inputs of the closed-form calls."""
    closed_names = {n for c in closed for n in c.names.values()}
    free = {n: t for n, t in flat.items() if n not in closed_names}
    probes = [torch.zeros(b, *c.out_shape, dtype=c.out_dtype, device=_device(flat)) for c in closed]

    def example(probe_list, free_params, *args):
        order = iter(calls)
        inputs: list[torch.Tensor] = []
        probe_iter = iter(probe_list)
        model = fm.Params(spec, {**flat, **free_params})

        def tap(ctx, x, out):
            if not ctx.spec.param_shapes():
                return out
            call = next(order)
            if call.path != ctx.path or type(call.spec) is not type(ctx.spec):
                raise RuntimeError(
                    f"transforms.dp: the model called layer '{ctx.path}' where the first pass "
                    f"called '{call.path}'; its calls must not depend on the data"
                )
            if call.rule is None:
                return out
            inputs.append(x)
            return out + next(probe_iter)

        with tapping(tap):
            value = _example_loss(loss, model, args, kwargs)
        return value, inputs

    in_dims = (0, None, *[0 if isinstance(a, torch.Tensor) else None for a in batch])
    per_example = vmap(grad(example, argnums=(0, 1), has_aux=True), in_dims=in_dims)
    (g_probes, g_free), inputs = per_example(probes, free, *batch)
    return g_probes, g_free, inputs


def _squared_norms(flat, closed, inputs, g_probes, g_free, group, n_groups: int, b: int):
    """Each clipping group's per-example squared norm ``(B,)``, and for every closed-form
    call its rule's weighted-sum step with its group."""
    dtype = torch.float32  # norms in at least float32, float64 for a float64 model
    for t in flat.values():
        dtype = torch.promote_types(dtype, t.dtype)
    sq = [torch.zeros(b, dtype=dtype, device=_device(flat)) for _ in range(n_groups)]
    finishers = []
    for call, x, g in zip(closed, inputs, g_probes, strict=True):
        norms_sq, finish = call.rule.compute(call.spec, x, g)
        k = group(next(iter(call.names.values())))  # one group per closed call (planned)
        finishers.append((call, finish, k))
        for v in norms_sq.values():
            sq[k] = sq[k] + v.to(dtype)
    for name, v in g_free.items():
        k = group(name)
        sq[k] = sq[k] + v.reshape(b, -1).to(dtype).square().sum(1)
    return sq, finishers


def _clipped_sum(flat, finishers, g_free, factors, group) -> dict[str, torch.Tensor]:
    """``sum_i c_i g_i`` for every param (``c_i`` its group's clip factors ``(B,)``), in the
    param's dtype; zeros for a param no call used."""
    grads: dict[str, torch.Tensor] = {}
    for call, finish, k in finishers:
        for local, v in finish(factors[k]).items():
            name = call.names[local]
            grads[name] = grads[name] + v if name in grads else v
    for name, v in g_free.items():
        factor = factors[group(name)]
        grads[name] = (v * factor.reshape(-1, *([1] * (v.dim() - 1))).to(v.dtype)).sum(0)
    return {n: grads[n].to(t.dtype) if n in grads else torch.zeros_like(t) for n, t in flat.items()}


def _device(flat: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(flat.values())).device if flat else torch.device("cpu")
