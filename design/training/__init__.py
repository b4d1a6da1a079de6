"""Training of the VAE-GAN: losses, loop, checkpoints."""
