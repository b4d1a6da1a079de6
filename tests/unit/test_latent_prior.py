import torch

from design.models.latent_prior import GaussianPrior


def test_fit_recovers_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    true_l = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-0.3, 0.2, 0.5]])
    x = torch.tensor([1.0, -2.0, 0.5]) + torch.randn(20000, 3, generator=g) @ true_l.T
    prior = GaussianPrior.fit(x)
    assert torch.allclose(prior.mean, torch.tensor([1.0, -2.0, 0.5]), atol=0.05)
    assert torch.allclose(prior.scale_tril @ prior.scale_tril.T, true_l @ true_l.T, atol=0.08)


def test_sampling_is_seeded_and_state_round_trips():
    prior = GaussianPrior.fit(torch.randn(100, 4))
    a = prior.sample(5, torch.Generator().manual_seed(1))
    b = GaussianPrior.from_state(prior.state()).sample(5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    std = GaussianPrior.standard(4)
    assert torch.equal(std.scale_tril, torch.eye(4))


def test_shrunk_fit_of_few_points_is_positive_definite_and_centred_on_them():
    wide = GaussianPrior.fit(torch.randn(500, 6, generator=torch.Generator().manual_seed(0)) * 3)
    few = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)) + 10.0  # n < Z: singular alone
    prior = GaussianPrior.fit_shrunk(few, wide)
    assert torch.allclose(prior.mean, few.mean(0), atol=1e-5)
    cov = prior.scale_tril @ prior.scale_tril.T
    assert torch.linalg.eigvalsh(cov).min() > 0
    lam = 6 / (4 + 6)  # weight of the wide covariance
    expected = (1 - lam) * torch.diagonal(torch.cov(few.T)).mean() + lam * torch.diagonal(
        wide.scale_tril @ wide.scale_tril.T).mean()
    assert torch.allclose(torch.diagonal(cov).mean(), expected, rtol=1e-3)
