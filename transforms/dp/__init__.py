"""Differentially private training as a function transform: ``transforms.dp``.

``clipped_grad(loss, max_norm)`` turns a loss of per-example losses into a function that
returns the *clipped, summed* gradient ``sum_i min(1, C / (|g_i| + 1e-6)) g_i`` and the
per-example norms ``|g_i|``, equal to materialising every example's gradient with
``vmap(grad)``, clipping and summing, without materialising them where a layer allows:

1. one pass, ``vmap`` over the examples, of the gradient of each example's loss with
   respect to zero *probes* added to the outputs of the layers that have a closed form
   (``Linear``, ``Conv1d``/``Conv2d``, ``Embedding``, ``LayerNorm``/``RMSNorm``/
   ``GroupNorm``; see ``_rules.py``), recording their inputs through a tap
   of the layer protocol (:func:`funcmodels.extend.tapping`). Their weights are
   constants there, so no weight gradient is computed. The params of any other layer
   (attention, recurrent layers, a ``Stack``...) are differentiated in the same pass:
   their per-example gradients are formed, theirs only;
2. per-example norms from each layer's input and output gradient (the "ghost" norms of
   Goodfellow 2015 and Li et al. 2022, and their Gram form for sequences);
3. the clipped sum from the same inputs and gradients with the clip factors as weights
   (the book-keeping of Bu et al. 2023): no second backward pass.

:func:`private_step` is a whole DP-SGD step in one call: the clipped sum, noise from the
step's key, division by the expected batch size and an ``fm.optim`` optimiser's update.

The rest of DP-SGD, functional: :func:`add_noise` (Gaussian noise from a key),
:func:`poisson_batches` / :func:`poisson_mask` (Poisson sampling) and :func:`epsilon`
(privacy accounting by Opacus's accountants, an optional dependency).

Per example means: the loss is evaluated on each example alone (a batch of one) under
``vmap``. A layer that mixes the examples of a batch (BatchNorm in train mode) has no
per-example gradient: BatchNorm refuses to run under ``vmap`` in train mode, with an error
that names it and the fix (GroupNorm).
"""

from ._accounting import add_noise, epsilon, poisson_batches, poisson_mask
from ._bounds import total_norm
from ._clip import clipped_grad
from ._step import PrivateStepInfo, private_step

__all__ = [
    "PrivateStepInfo",
    "add_noise",
    "clipped_grad",
    "epsilon",
    "poisson_batches",
    "poisson_mask",
    "private_step",
    "total_norm",
]
