"""Property predictors beyond the discriminator's own heads: GNN surrogates, physics oracles
(bond-valence site energy), uncertainty and adversarial training. The generator currently scores
properties with its discriminator's property head (design/models/vaegan.py)."""
