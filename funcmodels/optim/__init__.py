"""Functional optimisers in optax's vocabulary: pairs of pure functions over pytrees.

An optimiser is a :class:`GradientTransformation` ``(init, update)``, usually a
:func:`chain` of small pieces::

    opt = fm.optim.chain(
        fm.optim.clip_by_global_norm(1.0),
        fm.optim.adamw(fm.optim.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000)),
    )
    opt_state = opt.init(params)
    grads = torch.func.grad(loss)(params, x, y)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = fm.optim.apply_updates(params, updates)

Params, grads, updates and optimiser state are pytrees, so a training step composes with
``vmap`` (train an ensemble at once) and ``torch.compile``. Nothing is updated in place:
``update`` returns new tensors and a new state. Step counts are tensors, never Python
ints, and schedules are tensor functions of them, so a compiled step traces once. The ops
run leaf by leaf: the multi-tensor ``torch._foreach_*`` kernels have no vmap batching
rule, and under ``torch.compile`` the per-leaf ops are fused anyway.

The pieces: :func:`scale`, :func:`scale_by_adam`, :func:`scale_by_rms`,
:func:`scale_by_rss`, :func:`scale_by_lion`, :func:`scale_by_trust_ratio`,
:func:`scale_by_schedule`, :func:`scale_by_learning_rate`, :func:`add_decayed_weights`,
:func:`clip`, :func:`clip_by_global_norm`, :func:`trace`, :func:`identity`,
:func:`set_to_zero`; the wrappers :func:`chain`, :func:`masked`, :func:`multi_transform`,
:func:`inject_hyperparams`, :func:`apply_every`, :func:`multi_steps`; the optimisers
:func:`sgd`, :func:`adam`, :func:`adamw`, :func:`lamb`, :func:`lion`, :func:`rmsprop`,
:func:`adagrad`; and the schedules (``*_schedule``, :func:`exponential_decay`,
:func:`join_schedules`).
"""

from ._alias import adagrad, adam, adamw, lamb, lion, rmsprop, sgd
from ._base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    set_to_zero,
)
from ._schedules import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)
from ._transforms import (
    ScaleByAdamState,
    ScaleByLionState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByScheduleState,
    TraceState,
    add_decayed_weights,
    clip,
    clip_by_global_norm,
    global_norm,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    scale_by_trust_ratio,
    trace,
)
from ._wrappers import (
    ApplyEveryState,
    InjectHyperparamsState,
    MaskedState,
    MultiStepsState,
    MultiTransformState,
    apply_every,
    inject_hyperparams,
    masked,
    multi_steps,
    multi_transform,
)

__all__ = [
    "ApplyEveryState",
    "EmptyState",
    "GradientTransformation",
    "InjectHyperparamsState",
    "MaskedState",
    "MultiStepsState",
    "MultiTransformState",
    "ScaleByAdamState",
    "ScaleByLionState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "TraceState",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_every",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "join_schedules",
    "lamb",
    "linear_schedule",
    "lion",
    "masked",
    "multi_steps",
    "multi_transform",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "rmsprop",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_trust_ratio",
    "set_to_zero",
    "sgd",
    "trace",
    "warmup_cosine_decay_schedule",
]
