"""Differentiable samples of discrete choices (elements, site types, tokens).

``gumbel`` perturbs logits [..., C] with Gumbel noise: its argmax is an exact sample of the
categorical, its tempered softmax a differentiable relaxation. ``straight_through`` returns the
one-hot of the sample in the forward pass and the relaxation's gradient in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gumbel(logits: torch.Tensor, tau: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft sample [.., C] with temperature tau, hard index [..]) of a Gumbel-perturbed categorical."""
    noisy = _perturbed(logits, generator)
    return torch.softmax(noisy / tau, dim=-1), noisy.argmax(-1)


def gumbel_index(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The hard index of :func:`gumbel` alone (the same noise, so the same sample), without the softmax."""
    return _perturbed(logits, generator).argmax(-1)


def _perturbed(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-10, 1 - 1e-10)
    return logits - torch.log(-torch.log(u))


def straight_through(soft: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One-hot of ``idx`` [..] forward, gradient of ``soft`` [.., C] backward."""
    hard = F.one_hot(idx, soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft
