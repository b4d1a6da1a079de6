"""Latent priors to sample from: the standard normal, or a Gaussian fitted to the encoded training set.

With a small KL weight the aggregate posterior of a VAE drifts away from N(0, I), and decoding
N(0, I) samples lands in regions the decoder never saw. Fitting a full-covariance Gaussian to the
posterior means of the training crystals after training ("ex-post density estimation", Ghosh et
al., ICLR 2020) samples where the decoder is competent. Shapes: mean [Z], scale_tril [Z, Z].

:class:`MixturePrior` samples around chosen latent points (e.g. the encodings of a campaign's best
candidates so far): a local search in latent space, one equal-weight Gaussian per point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GaussianPrior:
    mean: torch.Tensor  # [Z]
    scale_tril: torch.Tensor  # [Z, Z], lower triangular

    @classmethod
    def standard(cls, dim: int, device: torch.device | str = "cpu") -> GaussianPrior:
        return cls(torch.zeros(dim, device=device), torch.eye(dim, device=device))

    @classmethod
    def fit(cls, mu: torch.Tensor, jitter: float = 1e-4) -> GaussianPrior:
        """Maximum-likelihood Gaussian of ``mu`` [N, Z] (a small ridge keeps it positive definite)."""
        mu = mu.detach().double()
        mean = mu.mean(0)
        centred = mu - mean
        cov = centred.T @ centred / max(len(mu) - 1, 1)
        cov = cov + jitter * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        return cls(mean.float(), torch.linalg.cholesky(cov).float())

    @classmethod
    def fit_shrunk(cls, mu: torch.Tensor, toward: GaussianPrior) -> GaussianPrior:
        """Gaussian of a few latent means ``mu`` [n, Z] whose covariance is shrunk toward ``toward``'s
        with weight ``Z / (n + Z)``: with n close to Z the sample covariance alone is near singular."""
        mu = mu.detach().double()
        n, dim = mu.shape
        mean = mu.mean(0)
        centred = mu - mean
        local = centred.T @ centred / max(n - 1, 1)
        wide = toward.scale_tril.double().to(mu.device)
        lam = dim / (n + dim)
        cov = (1 - lam) * local + lam * (wide @ wide.T)
        cov = cov + 1e-6 * torch.eye(dim, dtype=cov.dtype, device=cov.device)
        return cls(mean.float(), torch.linalg.cholesky(cov).float())

    def scaled(self, factor: float) -> GaussianPrior:
        """The same Gaussian with every standard deviation multiplied by ``factor`` (> 0)."""
        if not factor > 0:
            raise ValueError(f"prior scale must be > 0, got {factor}")
        return self if factor == 1.0 else GaussianPrior(self.mean, factor * self.scale_tril)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(n, self.mean.numel(), generator=generator, device=self.mean.device)
        return self.mean + eps @ self.scale_tril.T

    def to(self, device: torch.device | str) -> GaussianPrior:
        return GaussianPrior(self.mean.to(device), self.scale_tril.to(device))

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.detach().cpu(), "scale_tril": self.scale_tril.detach().cpu()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> GaussianPrior:
        return cls(state["mean"], state["scale_tril"])


@dataclass
class MixturePrior:
    """Equal-weight mixture of Gaussians centred on ``centres`` [M, Z], all with ``scale_tril`` [Z, Z]."""

    centres: torch.Tensor  # [M, Z]
    scale_tril: torch.Tensor  # [Z, Z]

    @classmethod
    def around(cls, centres: torch.Tensor, shape: GaussianPrior, spread: float) -> MixturePrior:
        """Gaussians of ``shape``'s covariance scaled by ``spread`` (so 1 is as wide as ``shape``)."""
        if len(centres) == 0:
            raise ValueError("a mixture prior needs at least one centre")
        if not spread > 0:
            raise ValueError(f"mixture spread must be > 0, got {spread}")
        return cls(centres.detach().float(), spread * shape.scale_tril.to(centres.device))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        pick = torch.randint(len(self.centres), (n,), generator=generator, device=self.centres.device)
        eps = torch.randn(n, self.centres.shape[1], generator=generator, device=self.centres.device)
        return self.centres[pick] + eps @ self.scale_tril.T

    def to(self, device: torch.device | str) -> MixturePrior:
        return MixturePrior(self.centres.to(device), self.scale_tril.to(device))
