"""Loss functions with optax's names, arguments and arithmetic, as ``optax.losses``.

Each loss is elementwise or per example (no reduction over the batch, as optax's): take
the mean yourself, ``fm.optim.losses.softmax_cross_entropy_with_integer_labels(logits,
y).mean()``. They are plain torch functions of tensors, so they compose with
``torch.func.grad`` and ``vmap`` (per-example gradients) and ``torch.compile``. Where
``torch.nn.functional`` has the same loss the numbers agree (tested; see each docstring).
"""

from ._classification import (
    convex_kl_divergence,
    generalized_kl_divergence,
    hinge_loss,
    kl_divergence,
    kl_divergence_with_log_targets,
    multiclass_hinge_loss,
    multiclass_perceptron_loss,
    perceptron_loss,
    poly_loss_cross_entropy,
    safe_softmax_cross_entropy,
    sigmoid_binary_cross_entropy,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
    sparsemax_loss,
)
from ._ctc import ctc_loss, ctc_loss_with_forward_probs
from ._more import (
    binary_dice_loss,
    dice_loss,
    make_fenchel_young_loss,
    multiclass_generalized_dice_loss,
    multiclass_sparsemax_loss,
    ntxent,
    ranking_softmax_loss,
    triplet_margin_loss,
)
from ._regression import (
    cosine_distance,
    cosine_similarity,
    huber_loss,
    l2_loss,
    log_cosh,
    smooth_labels,
    squared_error,
)

__all__ = [
    "binary_dice_loss",
    "convex_kl_divergence",
    "cosine_distance",
    "cosine_similarity",
    "ctc_loss",
    "ctc_loss_with_forward_probs",
    "dice_loss",
    "generalized_kl_divergence",
    "hinge_loss",
    "huber_loss",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "l2_loss",
    "log_cosh",
    "make_fenchel_young_loss",
    "multiclass_generalized_dice_loss",
    "multiclass_hinge_loss",
    "multiclass_perceptron_loss",
    "multiclass_sparsemax_loss",
    "ntxent",
    "perceptron_loss",
    "poly_loss_cross_entropy",
    "ranking_softmax_loss",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "smooth_labels",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "sparsemax_loss",
    "squared_error",
    "triplet_margin_loss",
]
