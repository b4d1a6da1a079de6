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
