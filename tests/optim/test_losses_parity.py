"""fm.optim.losses against optax.losses 0.2.8, side by side in float64 on random inputs:
every loss optax.losses exports, with default and non-default arguments, to 1e-10
absolute (values of order 1-10); signatures name for name."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from funcmodels.optim import losses

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
jax.config.update("jax_enable_x64", True)

TOL = 1e-10
D = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=_g(seed), dtype=D) * scale


def probs(*shape, seed=0):
    return torch.softmax(randn(*shape, seed=seed, scale=2.0), -1)


def ints(high, *shape, seed=0):
    return torch.randint(0, high, shape, generator=_g(seed))


def mask(*shape, seed=0):
    m = torch.rand(*shape, generator=_g(seed)) > 0.3
    m[..., 0] = True
    return m


def onehot(high, *shape, seed=0):
    return (ints(high, *shape, seed=seed)[..., None] == torch.arange(high)).to(D)


def _ctc_inputs():
    logits = randn(3, 12, 5, seed=1)
    logit_pad = torch.zeros(3, 12, dtype=D)
    logit_pad[1, 9:] = 1.0
    logit_pad[2, 6:] = 1.0
    labels = torch.tensor([[1, 2, 2, 3], [4, 1, 0, 0], [3, 3, 0, 0]])
    label_pad = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=D)
    return (logits, logit_pad, labels, label_pad)


def _fy(lib):
    lse = torch.logsumexp if lib is losses else jax.nn.logsumexp
    return lib.make_fenchel_young_loss(lambda s: lse(s, -1))


# name -> (function name, positional args, keyword args)
CASES = {
    "squared_error": ("squared_error", (randn(4, 3), randn(4, 3, seed=1)), {}),
    "squared_error-no-targets": ("squared_error", (randn(4, 3),), {}),
    "l2_loss": ("l2_loss", (randn(4, 3), randn(4, 3, seed=1)), {}),
    "huber_loss": ("huber_loss", (randn(5, 3, scale=3), randn(5, 3, seed=1)), {}),
    "huber_loss-delta": ("huber_loss", (randn(5, 3, scale=3), randn(5, 3, seed=1)), {"delta": 0.4}),
    "log_cosh": ("log_cosh", (randn(5, 3, scale=20), randn(5, 3, seed=1)), {}),
    "log_cosh-no-targets": ("log_cosh", (randn(5, 3, scale=5),), {}),
    "cosine_similarity": ("cosine_similarity", (randn(4, 6), randn(4, 6, seed=1)), {}),
    "cosine_similarity-all": (
        "cosine_similarity",
        (randn(4, 6), randn(4, 6, seed=1)),
        {"epsilon": 0.5, "axis": (0, 1), "where": mask(4, 6, seed=2)},
    ),
    "cosine_distance": ("cosine_distance", (randn(4, 6), randn(4, 6, seed=1)), {"axis": 0}),
    "smooth_labels": ("smooth_labels", (onehot(5, 4), 0.1), {}),
    "smooth_labels-where": ("smooth_labels", (onehot(5, 4), 0.2), {"where": mask(4, 5)}),
    "sigmoid_binary_cross_entropy": (
        "sigmoid_binary_cross_entropy",
        (randn(6, 3, scale=4), torch.rand(6, 3, generator=_g(1), dtype=D)),
        {},
    ),
    "sigmoid_binary_cross_entropy-int-labels": (
        "sigmoid_binary_cross_entropy",
        (randn(6, 3, scale=4), ints(2, 6, 3, seed=1)),
        {},
    ),
    "hinge_loss": ("hinge_loss", (randn(6), torch.sign(randn(6, seed=1))), {}),
    "perceptron_loss": ("perceptron_loss", (randn(6), torch.sign(randn(6, seed=1))), {}),
    "sparsemax_loss": ("sparsemax_loss", (randn(8, scale=2), ints(2, 8, seed=1)), {}),
    "safe_softmax_cross_entropy": (
        "safe_softmax_cross_entropy",
        (randn(4, 5, scale=3), probs(4, 5, seed=1)),
        {},
    ),
    "softmax_cross_entropy": (
        "softmax_cross_entropy",
        (randn(4, 5, scale=3), probs(4, 5, seed=1)),
        {},
    ),
    "softmax_cross_entropy-axis-where": (
        "softmax_cross_entropy",
        (randn(5, 4, scale=3), probs(4, 5, seed=1).T.contiguous()),
        {"axis": 0, "where": mask(5, 4, seed=2).T.contiguous().T},
    ),
    "softmax_cross_entropy_with_integer_labels": (
        "softmax_cross_entropy_with_integer_labels",
        (randn(6, 5, scale=3), ints(5, 6, seed=1)),
        {},
    ),
    "softmax_cross_entropy_with_integer_labels-axis0": (
        "softmax_cross_entropy_with_integer_labels",
        (randn(5, 6, scale=3), ints(5, 6, seed=1)),
        {"axis": 0},
    ),
    "softmax_cross_entropy_with_integer_labels-tuple-where": (
        "softmax_cross_entropy_with_integer_labels",
        (randn(3, 2, 4, scale=3), ints(8, 3, seed=1)),
        {"axis": (1, 2), "where": torch.ones(3, 2, 4, dtype=torch.bool)},
    ),
    "softmax_cross_entropy_with_integer_labels-where": (
        "softmax_cross_entropy_with_integer_labels",
        (randn(6, 5, scale=3), torch.zeros(6, dtype=torch.int64)),
        {"where": mask(6, 5, seed=3)},
    ),
    "multiclass_hinge_loss": ("multiclass_hinge_loss", (randn(6, 4), ints(4, 6, seed=1)), {}),
    "multiclass_perceptron_loss": (
        "multiclass_perceptron_loss",
        (randn(6, 4), ints(4, 6, seed=1)),
        {},
    ),
    "multiclass_sparsemax_loss": (
        "multiclass_sparsemax_loss",
        (randn(6, 5, scale=2), ints(5, 6, seed=1)),
        {},
    ),
    "poly_loss_cross_entropy": (
        "poly_loss_cross_entropy",
        (randn(4, 5, scale=3), probs(4, 5, seed=1)),
        {},
    ),
    "poly_loss_cross_entropy-all": (
        "poly_loss_cross_entropy",
        (randn(4, 5, scale=3), probs(4, 5, seed=1)),
        {"epsilon": -0.5, "where": mask(4, 5, seed=2)},
    ),
    "kl_divergence": ("kl_divergence", (torch.log(probs(4, 5)), probs(4, 5, seed=1)), {}),
    "kl_divergence-zeros": (
        "kl_divergence",
        (torch.log(probs(4, 5)), onehot(5, 4, seed=1)),
        {"where": mask(4, 5, seed=2)},
    ),
    "kl_divergence_with_log_targets": (
        "kl_divergence_with_log_targets",
        (torch.log(probs(4, 5)), torch.log(probs(4, 5, seed=1))),
        {"axis": None},
    ),
    "generalized_kl_divergence": (
        "generalized_kl_divergence",
        (randn(4, 5), torch.rand(4, 5, generator=_g(1), dtype=D)),
        {},
    ),
    "convex_kl_divergence": (
        "convex_kl_divergence",
        (randn(4, 5), torch.rand(4, 5, generator=_g(1), dtype=D)),
        {"axis": 0},
    ),
    "sigmoid_focal_loss": (
        "sigmoid_focal_loss",
        (randn(6, 3, scale=3), ints(2, 6, 3, seed=1)),
        {},
    ),
    "sigmoid_focal_loss-soft-alpha": (
        "sigmoid_focal_loss",
        (randn(6, 3, scale=3), torch.rand(6, 3, generator=_g(1), dtype=D)),
        {"alpha": 0.25, "gamma": 1.5},
    ),
    "ctc_loss": ("ctc_loss", _ctc_inputs(), {}),
    "ctc_loss-blank": ("ctc_loss", _ctc_inputs(), {"blank_id": 4, "log_epsilon": -1e4}),
    "ctc_loss_with_forward_probs": ("ctc_loss_with_forward_probs", _ctc_inputs(), {}),
    "ranking_softmax_loss": (
        "ranking_softmax_loss",
        (randn(3, 6), torch.rand(3, 6, generator=_g(1), dtype=D)),
        {},
    ),
    "ranking_softmax_loss-where-weights": (
        "ranking_softmax_loss",
        (randn(3, 6), torch.rand(3, 6, generator=_g(1), dtype=D)),
        {"where": mask(3, 6, seed=2), "weights": torch.rand(3, 6, generator=_g(3), dtype=D)},
    ),
    "ranking_softmax_loss-none": (
        "ranking_softmax_loss",
        (randn(3, 6), torch.rand(3, 6, generator=_g(1), dtype=D)),
        {"reduce_fn": None, "where": mask(3, 6, seed=2)},
    ),
    "ntxent": ("ntxent", (randn(8, 4), torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])), {}),
    "ntxent-temperature": (
        "ntxent",
        (randn(8, 4), torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])),
        {"temperature": 0.5},
    ),
    "triplet_margin_loss": (
        "triplet_margin_loss",
        (randn(5, 4), randn(5, 4, seed=1), randn(5, 4, seed=2)),
        {},
    ),
    "triplet_margin_loss-all": (
        "triplet_margin_loss",
        (randn(4, 5), randn(4, 5, seed=1), randn(4, 5, seed=2)),
        {"axis": 0, "norm_degree": 4, "margin": 2.0, "eps": 1e-3},
    ),
    "dice_loss": ("dice_loss", (randn(2, 4, 4, 3), onehot(3, 2, 4, 4, seed=1)), {}),
    "dice_loss-all": (
        "dice_loss",
        (randn(2, 4, 4, 3), onehot(3, 2, 4, 4, seed=1)),
        {
            "class_weights": torch.tensor([0.2, 1.0, 2.0], dtype=D),
            "smooth": 0.5,
            "alpha": 0.3,
            "beta": 0.7,
            "reduction": "sum",
            "ignore_background": True,
        },
    ),
    "dice_loss-probabilities": (
        "dice_loss",
        (probs(2, 6, 3), onehot(3, 2, 6, seed=1)),
        {"apply_softmax": False, "reduction": "none"},
    ),
    "multiclass_generalized_dice_loss": (
        "multiclass_generalized_dice_loss",
        (randn(2, 5, 3), onehot(3, 2, 5, seed=1)),
        {"ignore_background": True},
    ),
    "binary_dice_loss": (
        "binary_dice_loss",
        (randn(2, 4, 4), ints(2, 2, 4, 4, seed=1).to(D)),
        {"smooth": 0.1},
    ),
}


def _to_jax(x):
    return jnp.asarray(x.numpy()) if isinstance(x, torch.Tensor) else x


def _call(lib, case):
    fn_name, args, kwargs = CASES[case]
    if lib is losses:
        return getattr(losses, fn_name)(*args, **kwargs)
    kwargs = {k: (jnp.mean if v is torch.mean else _to_jax(v)) for k, v in kwargs.items()}
    return getattr(optax.losses, fn_name)(*[_to_jax(a) for a in args], **kwargs)


def _close(ours, theirs, tol=TOL):
    if isinstance(ours, tuple):
        return all(_close(a, b, tol) for a, b in zip(ours, theirs, strict=True))
    a, b = ours.detach().numpy(), np.asarray(theirs)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype == np.float64, (a.dtype, b.dtype)
    return np.array_equal(np.isnan(a), np.isnan(b)) and np.nanmax(np.abs(a - b), initial=0) <= tol


@pytest.mark.parametrize("case", list(CASES))
def test_losses_match_optax(case):
    assert _close(_call(losses, case), _call(optax.losses, case))


def test_fenchel_young_matches_optax():
    scores, targets = randn(4, 5), probs(4, 5, seed=1)
    ours = _fy(losses)(scores, targets)
    theirs = _fy(optax.losses)(_to_jax(scores), _to_jax(targets))
    assert _close(ours, theirs)


def _default(value):
    return torch.mean if value is jnp.mean else value


@pytest.mark.parametrize("name", losses.__all__)
def test_signatures_match_optax(name):
    ours = inspect.signature(getattr(losses, name)).parameters
    theirs = inspect.signature(getattr(optax.losses, name)).parameters
    assert list(ours) == list(theirs)
    for key, p in theirs.items():
        assert ours[key].kind == p.kind, key
        assert _default(p.default) == ours[key].default or p.default is ours[key].default, key


def test_every_optax_loss_is_here():
    theirs = {n for n in dir(optax.losses) if not n.startswith("_")}
    assert theirs == set(losses.__all__)
