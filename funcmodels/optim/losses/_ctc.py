"""optax's connectionist temporal classification (CTC) loss, as optax's: the forward
(alpha) recursion in log space over padded batches."""

from __future__ import annotations

import torch

from ._common import one_hot


def _check(logits, logit_paddings, labels, label_paddings):
    where = "fm.optim.losses.ctc_loss"
    if logits.dim() != 3 or labels.dim() != 2:
        raise ValueError(
            f"{where}: expected logits (batch, time, classes) and labels (batch, length), "
            f"got shapes {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.shape != label_paddings.shape or logits.shape[:2] != logit_paddings.shape:
        raise ValueError(
            f"{where}: the paddings must be shaped as labels {tuple(labels.shape)} and as "
            f"logits' first two axes {tuple(logits.shape[:2])}, got "
            f"{tuple(label_paddings.shape)} and {tuple(logit_paddings.shape)}"
        )
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{where}: expected labels to have batch size {logits.shape[0]}, got {labels.shape[0]}"
        )


def _phi(phi: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
    return torch.cat([phi[:, :1], torch.logaddexp(phi[:, 1:], added)], dim=-1)


def ctc_loss_with_forward_probs(
    logits: torch.Tensor,
    logit_paddings: torch.Tensor,
    labels: torch.Tensor,
    label_paddings: torch.Tensor,
    *,
    blank_id: int = 0,
    log_epsilon: float = -1e5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CTC loss and its forward probabilities, as optax's.

    Arguments:
        logits: ``(B, T, K)`` unnormalized log-probabilities of the classes per frame.
        logit_paddings: ``(B, T)``, 1.0 at padded frames, 0.0 elsewhere.
        labels: ``(B, N)`` integer label sequences.
        label_paddings: ``(B, N)``, 1.0 at padded labels, 0.0 elsewhere (padding last).
        blank_id: the class of the blank.
        log_epsilon: the number standing for ``log(0)``.

    Returns:
        ``(per_seq_loss, logalpha_phi, logalpha_emit)``: the ``(B,)`` losses (negative
            log-likelihoods) and the ``(T, B, N + 1)`` and ``(T, B, N)`` forward
            log-probabilities of the blank and the emitting states.

    Raises:
        ValueError: shapes that do not fit.
    """
    _check(logits, logit_paddings, labels, label_paddings)
    batch, _, num_classes = logits.shape
    maxlabellen = labels.shape[1]
    dtype = logits.dtype
    logprobs = torch.log_softmax(logits, dim=-1)
    labellens = maxlabellen - label_paddings.sum(dim=1).to(torch.int32)
    repeat = (labels[:, :-1] == labels[:, 1:]).to(torch.float32)
    repeat = torch.nn.functional.pad(repeat, (0, 1)).to(dtype)
    logprobs_phi = logprobs[:, :, blank_id : blank_id + 1].transpose(0, 1)
    logprobs_emit = torch.einsum("btk,bnk->tbn", logprobs, one_hot(labels, num_classes, dtype))
    phi = torch.full((batch, maxlabellen + 1), log_epsilon, dtype=dtype, device=logits.device)
    phi = torch.cat([torch.zeros_like(phi[:, :1]), phi[:, 1:]], dim=1)
    emit = torch.full((batch, maxlabellen), log_epsilon, dtype=dtype, device=logits.device)
    phis, emits = [], []
    for t in range(logits.shape[1]):
        prev_phi_orig = phi
        prev_phi = _phi(phi, emit + log_epsilon * repeat)
        next_emit = torch.logaddexp(prev_phi[:, :-1] + logprobs_emit[t], emit + logprobs_emit[t])
        next_phi = _phi(
            prev_phi + logprobs_phi[t], emit + logprobs_phi[t] + log_epsilon * (1.0 - repeat)
        )
        pad = logit_paddings[:, t].reshape(batch, 1).to(dtype)
        emit = pad * emit + (1.0 - pad) * next_emit
        phi = pad * prev_phi_orig + (1.0 - pad) * next_phi
        phis.append(phi)
        emits.append(emit)
    last = _phi(phis[-1], emits[-1])
    logalpha_phi = torch.stack(phis[:-1] + [last])
    hot = one_hot(labellens, maxlabellen + 1, dtype)
    per_seq_loss = -(last * hot).sum(-1)
    return per_seq_loss, logalpha_phi, torch.stack(emits)


def ctc_loss(
    logits: torch.Tensor,
    logit_paddings: torch.Tensor,
    labels: torch.Tensor,
    label_paddings: torch.Tensor,
    *,
    blank_id: int = 0,
    log_epsilon: float = -1e5,
) -> torch.Tensor:
    """The CTC loss per sequence, as optax's (``F.ctc_loss(..., reduction="none")``
    for sequences without padding in the middle).

    Arguments:
        logits: ``(B, T, K)`` unnormalized log-probabilities of the classes per frame.
        logit_paddings: ``(B, T)``, 1.0 at padded frames, 0.0 elsewhere.
        labels: ``(B, N)`` integer label sequences.
        label_paddings: ``(B, N)``, 1.0 at padded labels, 0.0 elsewhere (padding last).
        blank_id: the class of the blank.
        log_epsilon: the number standing for ``log(0)``.

    Returns:
        The ``(B,)`` negative log-likelihoods.
    """
    loss, _, _ = ctc_loss_with_forward_probs(
        logits, logit_paddings, labels, label_paddings, blank_id=blank_id, log_epsilon=log_epsilon
    )
    return loss
