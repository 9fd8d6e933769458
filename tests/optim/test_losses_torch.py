"""fm.optim.losses against torch.nn.functional's counterparts (float64, tolerances
stated per case), and per-example gradients under ``vmap(grad)`` against autograd on
the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from funcmodels.optim import losses

D = torch.float64


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


def close(a, b, tol):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert float((a - b).abs().max()) <= tol


def test_cross_entropies_match_torch():
    logits, y = randn(7, 5, scale=3), torch.tensor([0, 4, 2, 2, 1, 3, 0])
    ce = F.cross_entropy(logits, y, reduction="none")
    close(losses.softmax_cross_entropy_with_integer_labels(logits, y), ce, 1e-12)
    soft = torch.softmax(randn(7, 5, seed=1), -1)
    close(
        losses.softmax_cross_entropy(logits, soft),
        F.cross_entropy(logits, soft, reduction="none"),
        1e-12,
    )
    close(
        losses.safe_softmax_cross_entropy(logits, soft),
        F.cross_entropy(logits, soft, reduction="none"),
        1e-12,
    )
    # channels first, as torch lays out segmentation logits: optax's axis=1
    maps, ymaps = (
        randn(2, 5, 3, 3, seed=2),
        torch.randint(0, 5, (2, 3, 3), generator=torch.Generator().manual_seed(3)),
    )
    close(
        losses.softmax_cross_entropy_with_integer_labels(maps, ymaps, axis=1),
        F.cross_entropy(maps, ymaps, reduction="none"),
        1e-12,
    )


def test_smoothed_labels_are_torch_label_smoothing():
    logits, y = randn(6, 4, scale=2), torch.tensor([0, 1, 2, 3, 0, 1])
    hot = (y[:, None] == torch.arange(4)).to(D)
    ours = losses.softmax_cross_entropy(logits, losses.smooth_labels(hot, 0.1))
    close(ours, F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1), 1e-12)


def test_binary_and_regression_losses_match_torch():
    x, t = (
        randn(6, 3, scale=4),
        torch.rand(6, 3, generator=torch.Generator().manual_seed(1), dtype=D),
    )
    close(
        losses.sigmoid_binary_cross_entropy(x, t),
        F.binary_cross_entropy_with_logits(x, t, reduction="none"),
        1e-12,
    )
    p, q = randn(6, 3, scale=3), randn(6, 3, seed=1)
    close(losses.squared_error(p, q), F.mse_loss(p, q, reduction="none"), 0.0)
    close(losses.l2_loss(p, q), 0.5 * F.mse_loss(p, q, reduction="none"), 0.0)
    close(
        losses.huber_loss(p, q, delta=0.7), F.huber_loss(p, q, reduction="none", delta=0.7), 1e-12
    )
    close(losses.log_cosh(p, q), torch.log(torch.cosh(p - q)), 1e-12)


def test_kl_and_cosine_match_torch():
    logp = torch.log_softmax(randn(4, 5), -1)
    t = torch.softmax(randn(4, 5, seed=1), -1)
    t[0, 2] = 0.0  # a zero target: xlogy's 0
    close(losses.kl_divergence(logp, t), F.kl_div(logp, t, reduction="none").sum(-1), 1e-12)
    logt = torch.log_softmax(randn(4, 5, seed=2), -1)
    close(
        losses.kl_divergence_with_log_targets(logp, logt),
        F.kl_div(logp, logt, reduction="none", log_target=True).sum(-1),
        1e-12,
    )
    a, b = randn(4, 6), randn(4, 6, seed=1)
    # torch clamps each norm at eps=1e-8: the same for vectors of norm ~1
    close(losses.cosine_similarity(a, b), F.cosine_similarity(a, b, dim=-1), 1e-12)
    close(losses.cosine_distance(a, b, axis=0), 1 - F.cosine_similarity(a, b, dim=0), 1e-12)


def test_triplet_margin_matches_torch_up_to_eps_placement():
    a, p, n = randn(5, 4), randn(5, 4, seed=1), randn(5, 4, seed=2)
    ours = losses.triplet_margin_loss(a, p, n, eps=0.0)
    # torch adds eps=1e-6 to each difference (pairwise_distance), optax inside the root
    close(ours, F.triplet_margin_loss(a, p, n, reduction="none"), 1e-5)
    close(ours, F.triplet_margin_loss(a, p, n, reduction="none", eps=0.0), 1e-12)


def test_ctc_matches_torch():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 12, 5, generator=g, dtype=D)
    labels = torch.tensor([[1, 2, 2, 3], [4, 1, 0, 0], [3, 3, 0, 0]])
    label_lengths, input_lengths = torch.tensor([4, 2, 2]), torch.tensor([12, 9, 6])
    label_pad = (torch.arange(4) >= label_lengths[:, None]).to(D)
    logit_pad = (torch.arange(12) >= input_lengths[:, None]).to(D)
    ours = losses.ctc_loss(logits, logit_pad, labels, label_pad)
    want = F.ctc_loss(
        torch.log_softmax(logits, -1).transpose(0, 1),
        labels,
        input_lengths,
        label_lengths,
        blank=0,
        reduction="none",
    )
    # optax's log(0) is log_epsilon = -1e5, torch's is -inf: equal where paths exist
    close(ours, want, 1e-9)


PER_EXAMPLE = {
    "softmax_cross_entropy_with_integer_labels": (
        lambda x, y: losses.softmax_cross_entropy_with_integer_labels(x, y),
        lambda: (randn(5, 4, scale=2), torch.tensor([0, 3, 1, 1, 2])),
    ),
    "softmax_cross_entropy-smoothed": (
        lambda x, y: losses.softmax_cross_entropy(x, losses.smooth_labels(y, 0.1)),
        lambda: (randn(5, 4), torch.eye(4, dtype=D)[[0, 3, 1, 1, 2]]),
    ),
    "sigmoid_binary_cross_entropy": (
        lambda x, y: losses.sigmoid_binary_cross_entropy(x, y).sum(),
        lambda: (
            randn(5, 3, scale=3),
            torch.rand(5, 3, generator=torch.Generator().manual_seed(1), dtype=D),
        ),
    ),
    "huber_loss": (
        lambda x, y: losses.huber_loss(x, y, delta=0.5).sum(),
        lambda: (randn(5, 3, scale=2), randn(5, 3, seed=1)),
    ),
    "cosine_distance": (
        lambda x, y: losses.cosine_distance(x, y),
        lambda: (randn(5, 6), randn(5, 6, seed=1)),
    ),
    "kl_divergence": (
        lambda x, y: losses.kl_divergence(torch.log_softmax(x, -1), y),
        lambda: (randn(5, 4), torch.softmax(randn(5, 4, seed=1), -1)),
    ),
    "multiclass_hinge_loss": (
        lambda x, y: losses.multiclass_hinge_loss(x, y),
        lambda: (randn(5, 4), torch.tensor([0, 3, 1, 1, 2])),
    ),
    "multiclass_sparsemax_loss": (
        lambda x, y: losses.multiclass_sparsemax_loss(x[None], y[None])[0],
        lambda: (randn(5, 4, scale=2), torch.tensor([0, 3, 1, 1, 2])),
    ),
    "sigmoid_focal_loss": (
        lambda x, y: losses.sigmoid_focal_loss(x, y, alpha=0.25).sum(),
        lambda: (randn(5, 3, scale=2), (randn(5, 3, seed=1) > 0).to(D)),
    ),
    "poly_loss_cross_entropy": (
        lambda x, y: losses.poly_loss_cross_entropy(x, y),
        lambda: (randn(5, 4), torch.softmax(randn(5, 4, seed=1), -1)),
    ),
    "ctc_loss": (
        lambda x, y: losses.ctc_loss(
            x[None], torch.zeros(1, 6, dtype=D), y[None], torch.zeros(1, 2, dtype=D)
        )[0],
        lambda: (randn(5, 6, 4), torch.tensor([[1, 2], [3, 3], [1, 1], [2, 3], [0 + 1, 2]])),
    ),
}


@pytest.mark.parametrize("name", list(PER_EXAMPLE))
def test_per_example_gradients_under_vmap(name):
    fn, make = PER_EXAMPLE[name]
    x, y = make()
    per_example = vmap(grad(fn))(x, y)
    xs = x.clone().requires_grad_(True)
    total = sum(fn(xs[i], y[i]) for i in range(x.shape[0]))
    (want,) = torch.autograd.grad(total, xs)
    close(per_example, want, 1e-12)
    assert bool(torch.isfinite(per_example).all())


def test_float32_inputs_give_float32_losses():
    from .test_losses_parity import CASES

    for case, (name, args, kwargs) in CASES.items():
        args = [a.float() if torch.is_tensor(a) and a.dtype == D else a for a in args]
        kwargs = {
            k: v.float() if torch.is_tensor(v) and v.dtype == D else v for k, v in kwargs.items()
        }
        out = getattr(losses, name)(*args, **kwargs)
        for t in out if isinstance(out, tuple) else (out,):
            assert t.dtype == torch.float32, case
