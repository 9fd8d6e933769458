"""Functional optimisers, a drop-in for optax: pairs of pure functions over pytrees.

The names, argument names, defaults and arithmetic are optax's, so code written for optax
runs with ``optax`` replaced by ``fm.optim``. An optimiser is a
:class:`GradientTransformation` ``(init, update)``, usually a :func:`chain` of small
pieces::

    opt = fm.optim.chain(
        fm.optim.clip_by_global_norm(1.0),
        fm.optim.adamw(fm.optim.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000)),
    )
    opt_state = opt.init(params)
    grads = torch.func.grad(loss)(params, x, y)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = fm.optim.apply_updates(params, updates)

Params, grads, updates and optimiser state are pytrees, so a training step composes with
``vmap`` (train an ensemble at once) and ``torch.compile``. Nothing a caller passes is
changed: ``update`` returns new tensors and a new state. Step counts are tensors, never
Python ints, and schedules are tensor functions of them, so a compiled step traces once.
In eager mode the arithmetic runs on torch's multi-tensor kernels (``torch._foreach_*``,
as ``torch.optim``); inside ``torch.func`` transforms (which have no batching rule for
them) and under ``torch.compile`` the same ops run leaf by leaf. Each leaf keeps its
dtype: state leaves keep theirs, updates come out in the promotion of the gradient's
dtype and the state's (float32 params with bfloat16 gradients: float32 updates), and
hyperparameters held as tensors are cast to each leaf's dtype.

torch.optim's arithmetic is reached through optax's own flags and pieces
(``rmsprop(..., eps_in_sqrt=False)``, ``chain(add_decayed_weights(wd), adam(...))``; see
the table in ``fm.optim._alias``).
"""

from ._accumulation import (
    ApplyEvery,
    ApplyEveryState,
    MultiSteps,
    MultiStepsState,
    apply_every,
    multi_steps,
    skip_large_updates,
    skip_not_finite,
)
from ._adam import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    adamax,
    adamaxw,
    amsgrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
)
from ._alias import (
    adagrad,
    adam,
    adamw,
    lamb,
    lion,
    nadam,
    nadamw,
    rmsprop,
    sgd,
    sign_sgd,
    signum,
)
from ._base import (
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    init_empty_state,
    set_to_zero,
)
from ._donated import DonatedAdamW, DonatedAdamWState, donated_adamw
from ._moments import (
    EmaState,
    ScaleByLionState,
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    TraceState,
    ema,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
    trace,
)
from ._schedules import (
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
)
from ._transforms import (
    ScaleByScheduleState,
    WeightDecayScheduleState,
    add_decayed_weights,
    clip,
    clip_by_global_norm,
    clip_by_global_norm_per_member,
    global_norm,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_by_sign,
    scale_by_trust_ratio,
)
from ._update import incremental_update, periodic_update
from ._wrappers import (
    ApplyIfFiniteState,
    InjectHyperparamsState,
    MaskedState,
    MultiTransformState,
    apply_if_finite,
    inject_hyperparams,
    masked,
    multi_transform,
)

# optax's names for the states of stateless pieces
AddDecayedWeightsState = ClipByGlobalNormState = ClipState = EmptyState
ScaleState = ScaleByTrustRatioState = EmptyState

__all__ = [
    "AddDecayedWeightsState",
    "ApplyEvery",
    "ApplyEveryState",
    "ApplyIfFiniteState",
    "ClipByGlobalNormState",
    "ClipState",
    "DonatedAdamW",
    "DonatedAdamWState",
    "EmaState",
    "EmptyState",
    "GradientTransformation",
    "InjectHyperparamsState",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByLionState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "ScaleByTrustRatioState",
    "ScaleState",
    "TraceState",
    "WeightDecayScheduleState",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "add_decayed_weights",
    "amsgrad",
    "apply_every",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "clip_by_global_norm_per_member",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "donated_adamw",
    "ema",
    "exponential_decay",
    "global_norm",
    "identity",
    "incremental_update",
    "init_empty_state",
    "inject_hyperparams",
    "join_schedules",
    "lamb",
    "linear_onecycle_schedule",
    "linear_schedule",
    "lion",
    "masked",
    "multi_steps",
    "multi_transform",
    "nadam",
    "nadamw",
    "periodic_update",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "rmsprop",
    "scale",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "set_to_zero",
    "sgd",
    "sgdr_schedule",
    "sign_sgd",
    "signum",
    "skip_large_updates",
    "skip_not_finite",
    "trace",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]
