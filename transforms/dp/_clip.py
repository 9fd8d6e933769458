"""Differentially private training as a function transform: ``transforms.dp``.

``clipped_grad(loss, max_norm)`` turns a loss of per-example losses into a function that
returns the *clipped, summed* gradient ``sum_i min(1, C / (|g_i| + 1e-6)) g_i`` and the
per-example norms ``|g_i|``, equal to materialising every example's gradient with
``vmap(grad)``, clipping and summing, without materialising them where a layer allows:

1. one pass, ``vmap`` over the examples, of the gradient of each example's loss with
   respect to zero *probes* added to the outputs of the layers that have a closed form
   (``Linear``, ``Conv1d``/``Conv2d``, ``Embedding``, ``LayerNorm``/``RMSNorm``/
   ``GroupNorm``; see :mod:`transforms._dp_layers`), recording their inputs through a tap
   of the layer protocol (:func:`funcmodels.extend.tapping`). Their weights are
   constants there, so no weight gradient is computed. The params of any other layer
   (attention, recurrent layers, a ``Stack``...) are differentiated in the same pass:
   their per-example gradients are formed, theirs only;
2. per-example norms from each layer's input and output gradient (the "ghost" norms of
   Goodfellow 2015 and Li et al. 2022, and their Gram form for sequences);
3. the clipped sum from the same inputs and gradients with the clip factors as weights
   (the book-keeping of Bu et al. 2023): no second backward pass.

The rest of DP-SGD, functional: :func:`add_noise` (Gaussian noise from a key),
:func:`poisson_batches` / :func:`poisson_mask` (Poisson sampling) and :func:`epsilon`
(privacy accounting by Opacus's accountants, an optional dependency).

Per example means: the loss is evaluated on each example alone (a batch of one) under
``vmap``. A layer that mixes the examples of a batch (BatchNorm in train mode) has no
per-example gradient: BatchNorm refuses to run under ``vmap`` in train mode, with an error
that names it and the fix (GroupNorm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad, vmap

import funcmodels as fm
from funcmodels.extend import name_hash, tapping

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


def _plan(loss, params, example_args, kwargs) -> list[_Call]:
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


def _check_bound(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"transforms.dp.{where}: max_norm must be a positive finite number, got {value!r}"
        )
    return float(value)


def _check_bounds(max_norm: Any, where: str) -> float | dict[str, float]:
    """A positive number (global clipping) or a non-empty mapping of layer paths to
    positive numbers (per-layer clipping)."""
    if not isinstance(max_norm, Mapping):
        return _check_bound(max_norm, where)
    if not max_norm:
        raise ValueError(f"transforms.dp.{where}: max_norm is an empty mapping")
    out = {}
    for path, value in max_norm.items():
        if not isinstance(path, str):
            raise TypeError(
                f"transforms.dp.{where}: max_norm keys must be layer paths (str), got {path!r}"
            )
        out[path] = _check_bound(value, f"{where}: max_norm[{path!r}]")
    return out


def total_norm(max_norm: float | Mapping[str, float]) -> float:
    """The bound of a whole example's clipped gradient: ``max_norm`` itself for global
    clipping, ``sqrt(sum of squares)`` of the per-layer bounds (the sensitivity that
    :func:`add_noise` scales its noise to)."""
    return _total(max_norm, "total_norm")


def _total(max_norm: Any, where: str) -> float:
    bounds = _check_bounds(max_norm, where)
    if isinstance(bounds, float):
        return bounds
    return float(sum(b * b for b in bounds.values()) ** 0.5)


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

    The result equals ``vmap(grad)``, clipping and summing (tested to 1e-5 relative);
    layers with a closed form never have their per-example gradients formed.
    """
    if not callable(loss):
        raise TypeError(f"transforms.dp.clipped_grad: loss must be callable, got {loss!r}")
    bounds = _check_bounds(max_norm, "clipped_grad")
    # The plan of the last call: the model's layers and rules depend only on the spec, the
    # example shapes and the state (a SparseLinear's mask), so a training loop plans once.
    cache: list[Any] = [None, None, None, None, None]

    def clipped(params: fm.Params, *batch: Any, **kwargs: Any):
        if not isinstance(params, fm.Params):
            raise TypeError(
                f"transforms.dp.clipped_grad: expected Params first, got {type(params).__name__}"
            )
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
        key = (shapes, tuple(sorted((k, id(v)) for k, v in kwargs.items())))
        if cache[0] is params.spec and cache[1] == key:
            calls, groups = cache[2], cache[4]
        else:
            calls = _plan(loss, params, batch, kwargs)
            groups = None
            if not isinstance(bounds, float):
                groups = _groups(params.flat(), bounds)
                for call in calls:  # a closed form clips a layer's params together
                    gs = {groups[n] for n in call.names.values() if n is not None}
                    if call.rule is not None and len(gs) > 1:
                        call.rule = None
            # the objects whose ids are in the key stay referenced, so no id is reused
            held = ([a for a in batch if not isinstance(a, torch.Tensor)], dict(kwargs))
            cache[:] = [params.spec, key, calls, held, groups]
        if groups is None:
            return _clipped(loss, params, batch, kwargs, calls, [bounds], None)
        return _clipped(loss, params, batch, kwargs, calls, list(bounds.values()), groups)

    return clipped


def _clipped(loss, params, batch, kwargs, calls, bounds, groups):
    """``bounds``: one per clipping group; ``groups``: each param's group (``None``: all in
    group 0)."""
    flat = {n: t.detach() for n, t in params.flat().items()}
    closed = [c for c in calls if c.rule is not None]
    closed_names = {n for c in closed for n in c.names.values()}
    free = {n: t for n, t in flat.items() if n not in closed_names}
    b = next(a.shape[0] for a in batch if isinstance(a, torch.Tensor) and a.dim() > 0)
    probes = [torch.zeros(b, *c.out_shape, dtype=c.out_dtype, device=_device(flat)) for c in closed]
    plan = iter(())

    def example(probe_list, free_params, *args):
        nonlocal plan
        plan = iter(calls)
        inputs: list[torch.Tensor] = []
        probe_iter = iter(probe_list)
        model = fm.Params(params.spec, {**flat, **free_params})

        def tap(ctx, x, out):
            if not ctx.spec.param_shapes():
                return out
            call = next(plan)
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

    # per-example squared norms
    dtype = torch.float32  # norms in at least float32, float64 for a float64 model
    for t in flat.values():
        dtype = torch.promote_types(dtype, t.dtype)
    group = (lambda name: 0) if groups is None else groups.__getitem__
    sq = [torch.zeros(b, dtype=dtype, device=_device(flat)) for _ in bounds]
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
    norms = sum(sq[1:], sq[0]).sqrt()
    factors = [(c / (s.sqrt() + 1e-6)).clamp(max=1.0) for c, s in zip(bounds, sq, strict=True)]

    grads: dict[str, torch.Tensor] = {}
    for call, finish, k in finishers:
        for local, v in finish(factors[k]).items():
            name = call.names[local]
            grads[name] = grads[name] + v if name in grads else v
    for name, v in g_free.items():
        factor = factors[group(name)]
        grads[name] = (v * factor.reshape(-1, *([1] * (v.dim() - 1))).to(v.dtype)).sum(0)
    out = {n: grads[n].to(t.dtype) if n in grads else torch.zeros_like(t) for n, t in flat.items()}
    return fm.Params(params.spec, out), norms


def _device(flat: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(flat.values())).device if flat else torch.device("cpu")


# -- the rest of DP-SGD --------------------------------------------------------------------


def add_noise(
    grads: Any,
    key: torch.Tensor,
    *,
    noise_multiplier: float,
    max_norm: float | Mapping[str, float],
) -> Any:
    """``grads`` plus Gaussian noise of std ``noise_multiplier * max_norm`` on every entry,
    drawn from ``key`` with each param's name folded in (the same key gives the same
    noise; nothing global is drawn from). ``grads``: Params or a dict of tensors.
    ``max_norm`` as given to :func:`clipped_grad`: per-layer bounds count as their
    :func:`total_norm`."""
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
        raise TypeError(
            "transforms.dp.add_noise: noise_multiplier must be a number, got "
            f"{type(noise_multiplier).__name__}"
        )
    if noise_multiplier < 0:
        raise ValueError(
            f"transforms.dp.add_noise: noise_multiplier must be >= 0, got {noise_multiplier!r}"
        )
    std = float(noise_multiplier) * _total(max_norm, "add_noise")

    def noisy(name: str, t: torch.Tensor) -> torch.Tensor:
        k = fm.fold_in(key, name_hash(name))
        return t + std * fm.random.normal(k, t.shape, t.dtype, t.device)

    return fm.tree.map_with_path(noisy, grads)


def poisson_mask(key: torch.Tensor, n: int, sample_rate: float) -> torch.Tensor:
    """Poisson sampling as a fixed-shape mask: each of ``n`` examples is in the batch with
    probability ``sample_rate``, independently (``(n,)`` bool, from ``key``). Multiply the
    per-example losses by it (or pass it as per-example weights) to keep shapes static for
    ``torch.compile``; an example left out contributes a zero gradient."""
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"transforms.dp: sample_rate must be in (0, 1], got {sample_rate!r}")
    return fm.random.uniform(key, (n,)) < sample_rate


def poisson_batches(
    key: torch.Tensor, n: int, sample_rate: float, steps: int
) -> Iterator[torch.Tensor]:
    """``steps`` Poisson-sampled batches of the indices ``0..n-1`` (variable sizes, as the
    privacy analysis of DP-SGD assumes), the ``i``-th from ``fold_in(key, i)``."""
    for i in range(steps):
        yield torch.nonzero(poisson_mask(fm.fold_in(key, i), n, sample_rate)).squeeze(1)


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The ``epsilon`` of ``(epsilon, delta)``-DP after ``steps`` steps of DP-SGD with
    Poisson sampling, from Opacus's accountants (``'rdp'``, ``'prv'`` or ``'gdp'``).
    Needs the ``dp`` extra: ``pip install funcmodels[dp]``."""
    try:
        from opacus.accountants import create_accountant
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "transforms.dp.epsilon needs Opacus's accountants: pip install 'funcmodels[dp]'"
        ) from err
    acc = create_accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))
