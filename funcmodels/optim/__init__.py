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

from . import contrib  # optax.contrib's optimisers
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
    GradientTransformationExtraArgs,
    apply_updates,
    chain,
    identity,
    init_empty_state,
    set_to_zero,
)
from ._donated import DonatedAdamW, DonatedAdamWState, donated_adamw
from ._lbfgs import ScaleByLBFGSState, lbfgs, scale_by_lbfgs
from ._linesearch import (
    BacktrackingLinesearchInfo,
    ScaleByBacktrackingLinesearchState,
    scale_by_backtracking_linesearch,
    value_and_grad_from_state,
)
from ._linesearch_zoom import (
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    scale_by_zoom_linesearch,
)
from ._microbatch import AccumulationType, Accumulator, microbatch
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
from ._more_aliases import (
    adabelief,
    adadelta,
    adafactor,
    adan,
    novograd,
    optimistic_adam,
    optimistic_adam_v2,
    radam,
    yogi,
)
from ._more_factored import FactoredState, scale_by_factored_rms
from ._more_lookahead import (
    LookaheadParams,
    LookaheadState,
    lookahead,
)
from ._more_pieces import (
    ScaleByDistanceOverGradientsState,
    ScaleByOptimisticGradientState,
    ScaleByRpropState,
    ScaleBySM3State,
    scale_by_distance_over_gradients,
    scale_by_optimistic_gradient,
    scale_by_param_block_norm,
    scale_by_param_block_rms,
    scale_by_polyak,
    scale_by_rprop,
    scale_by_sm3,
)
from ._more_scales import (
    ScaleByAdaDeltaState,
    ScaleByAdanState,
    ScaleByBeliefState,
    ScaleByNovogradState,
    scale_by_adadelta,
    scale_by_adan,
    scale_by_belief,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
)
from ._more_sgd import (
    PolyakSGD,
    fromage,
    lars,
    noisy_sgd,
    optimistic_gradient_descent,
    polyak_sgd,
    rprop,
    sm3,
)
from ._more_transforms import (
    AddNoiseState,
    ZeroNansState,
    adaptive_grad_clip,
    add_noise,
    centralize,
    clip_by_block_rms,
    keep_params_nonnegative,
    normalize_by_update_norm,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
    scale_gradient,
    zero_nans,
)
from ._more_wrappers import (
    ConditionallyMaskState,
    ConditionallyTransformState,
    MonitorState,
    PartitionState,
    SnapshotState,
    conditionally_mask,
    conditionally_transform,
    flatten,
    freeze,
    measure_with_ema,
    monitor,
    named_chain,
    partition,
    selective_transform,
    snapshot,
)
from ._numerics import matrix_inverse_pth_root, multi_normal, nnls, power_iteration
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
from ._stateful_inject import (
    InjectStatefulHyperparamsState,
    WrappedSchedule,
    WrappedScheduleState,
    inject_stateful_hyperparams,
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
from ._types import (
    MaskedNode,
    MaskOrFn,
    OptState,
    ScalarOrSchedule,
    Schedule,
    ShouldSkipUpdateFunction,
    StatefulSchedule,
    TransformInitFn,
    TransformUpdateExtraArgsFn,
    TransformUpdateFn,
    Updates,
)
from ._types import (
    Params as Params,
)
from ._update import incremental_update, periodic_update
from ._utilities import (
    bias_correction,
    safe_increment,
    safe_int32_increment,
    safe_norm,
    safe_root_mean_squares,
    stateless,
    stateless_with_tree_map,
    tree_map_params,
    update_infinity_moment,
    update_moment,
    update_moment_per_elem_norm,
    with_extra_args_support,
)
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
AdaptiveGradClipState = NonNegativeParamsState = EmptyState

__all__ = ["AddDecayedWeightsState", "ApplyEvery", "ApplyEveryState", "ApplyIfFiniteState"]
__all__ += ["ClipByGlobalNormState", "ClipState", "DonatedAdamW", "DonatedAdamWState", "EmaState"]
__all__ += ["EmptyState", "GradientTransformation", "InjectHyperparamsState", "MaskedState"]
__all__ += ["MultiSteps", "MultiStepsState", "MultiTransformState", "ScaleByAdamState"]
__all__ += ["ScaleByAmsgradState", "ScaleByLionState", "ScaleByRStdDevState"]
__all__ += ["ScaleByRStdDevWithCountState", "ScaleByRmsState", "ScaleByRmsWithCountState"]
__all__ += ["ScaleByRssState", "ScaleByScheduleState", "ScaleByTrustRatioState", "ScaleState"]
__all__ += ["TraceState", "WeightDecayScheduleState", "adagrad", "adam", "adamax", "adamaxw"]
__all__ += ["adamw", "add_decayed_weights", "amsgrad", "apply_every", "apply_if_finite"]
__all__ += ["apply_updates", "chain", "clip", "clip_by_global_norm"]
__all__ += ["clip_by_global_norm_per_member", "constant_schedule", "cosine_decay_schedule"]
__all__ += ["cosine_onecycle_schedule", "donated_adamw", "ema", "exponential_decay", "global_norm"]
__all__ += ["identity", "incremental_update", "init_empty_state", "inject_hyperparams"]
__all__ += ["join_schedules", "lamb", "linear_onecycle_schedule", "linear_schedule", "lion"]
__all__ += ["masked", "multi_steps", "multi_transform", "nadam", "nadamw", "periodic_update"]
__all__ += ["piecewise_constant_schedule", "piecewise_interpolate_schedule", "polynomial_schedule"]
__all__ += ["rmsprop", "scale", "scale_by_adam", "scale_by_adamax", "scale_by_amsgrad"]
__all__ += ["scale_by_learning_rate", "scale_by_lion", "scale_by_rms", "scale_by_rss"]
__all__ += ["scale_by_schedule", "scale_by_sign", "scale_by_stddev", "scale_by_trust_ratio"]
__all__ += ["set_to_zero", "sgd", "sgdr_schedule", "sign_sgd", "signum", "skip_large_updates"]
__all__ += ["skip_not_finite", "trace", "warmup_constant_schedule", "warmup_cosine_decay_schedule"]
__all__ += ["warmup_exponential_decay_schedule"]

# optax's remaining optimisers, pieces, transforms, wrappers and utilities
__all__ += [
    "AdaptiveGradClipState",
    "AddNoiseState",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "FactoredState",
    "LookaheadParams",
    "LookaheadState",
    "MonitorState",
    "NonNegativeParamsState",
    "PartitionState",
    "PolyakSGD",
    "ScaleByAdaDeltaState",
    "ScaleByAdanState",
    "ScaleByBeliefState",
    "ScaleByDistanceOverGradientsState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleByRpropState",
    "ScaleBySM3State",
    "SnapshotState",
    "ZeroNansState",
    "adabelief",
    "adadelta",
    "adafactor",
    "adan",
    "adaptive_grad_clip",
    "add_noise",
    "bias_correction",
    "centralize",
    "clip_by_block_rms",
    "conditionally_mask",
    "conditionally_transform",
    "flatten",
    "freeze",
    "fromage",
    "keep_params_nonnegative",
    "lars",
    "lookahead",
    "measure_with_ema",
    "monitor",
    "named_chain",
    "noisy_sgd",
    "normalize_by_update_norm",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "partition",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "polyak_sgd",
    "radam",
    "rprop",
    "safe_increment",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
    "scale_by_adadelta",
    "scale_by_adan",
    "scale_by_belief",
    "scale_by_distance_over_gradients",
    "scale_by_factored_rms",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_radam",
    "scale_by_rprop",
    "scale_by_sm3",
    "scale_by_yogi",
    "scale_gradient",
    "selective_transform",
    "sm3",
    "snapshot",
    "stateless",
    "stateless_with_tree_map",
    "tree_map_params",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "with_extra_args_support",
    "yogi",
    "zero_nans",
    "GradientTransformationExtraArgs",
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByLBFGSState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "lbfgs",
    "scale_by_backtracking_linesearch",
    "scale_by_lbfgs",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
    "AccumulationType",
    "Accumulator",
    "microbatch",
]

# optax's stateful hyperparameter injection
__all__ += ["InjectStatefulHyperparamsState", "WrappedSchedule", "WrappedScheduleState"]
__all__ += ["inject_stateful_hyperparams"]
# optax's type names, for annotations (``Params`` is reachable but kept out of __all__, so
# a star import never rebinds funcmodels.Params; see _types.py)
__all__ += ["MaskOrFn", "MaskedNode", "OptState", "ScalarOrSchedule", "Schedule"]
__all__ += ["ShouldSkipUpdateFunction", "StatefulSchedule"]
__all__ += ["TransformInitFn", "TransformUpdateExtraArgsFn", "TransformUpdateFn", "Updates"]
# optax's numerics
__all__ += ["matrix_inverse_pth_root", "multi_normal", "nnls", "power_iteration"]
# optax's submodules: losses, projections, second_order, and namespaces over names above
from . import losses, projections, schedules, second_order, transforms, tree_utils  # noqa: E402

__all__ += ["losses", "projections", "schedules", "second_order", "transforms", "tree_utils"]
# optax's losses at its top level (optax keeps these aliases of optax.losses)
from .losses import (  # noqa: E402
    convex_kl_divergence,
    cosine_distance,
    cosine_similarity,
    ctc_loss,
    ctc_loss_with_forward_probs,
    generalized_kl_divergence,
    hinge_loss,
    huber_loss,
    kl_divergence,
    l2_loss,
    log_cosh,
    ntxent,
    safe_softmax_cross_entropy,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    smooth_labels,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
    squared_error,
)

__all__ += ["convex_kl_divergence", "cosine_distance", "cosine_similarity", "ctc_loss"]
__all__ += ["ctc_loss_with_forward_probs", "generalized_kl_divergence", "hinge_loss"]
__all__ += ["huber_loss", "kl_divergence", "l2_loss", "log_cosh", "ntxent"]
__all__ += ["safe_softmax_cross_entropy", "sigmoid_binary_cross_entropy", "sigmoid_focal_loss"]
__all__ += ["smooth_labels", "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]
__all__ += ["squared_error"]
__all__ += ["contrib"]
# optax.tree: tree arithmetic and lookups (funcmodels.tree is the structural toolbox)
from . import tree  # noqa: E402

__all__ += ["tree"]
from . import microbatching  # noqa: E402  (optax.microbatching)

__all__ += ["microbatching"]
from . import assignment  # noqa: E402  (optax.assignment)

__all__ += ["assignment"]
from . import perturbations  # noqa: E402  (optax.perturbations)

__all__ += ["perturbations"]
