"""Fine-tune a trained generator toward a set of objects (e.g. a campaign's best candidates so far).

Maximum likelihood on those objects alone: the VAE's reconstruction and KL terms (``train.beta_kl``),
each object conditioned on what the discriminator's property heads read in it, for a few passes at a
small learning rate. The decoder's distribution moves toward the objects (one hill-climbing step of
a goal-directed campaign); the adversarial game is not replayed, and the discriminator, the fitted
latent prior and the data statistics stay as they were. The result is a complete checkpoint of the
same format whose ``finetune`` list records every step, so it loads as any generator does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from design.training.checkpoint import load_checkpoint, save_checkpoint
from design.training.losses import gaussian_kl

log = logging.getLogger(__name__)


def finetune_checkpoint(checkpoint: str | Path, objs: list, out: str | Path, epochs: int = 2, lr: float = 3e-4,
                        batch_size: int = 64, seed: int = 0, grad_clip: float = 5.0) -> Path:
    """Fine-tune the generator in ``checkpoint`` on ``objs`` (domain objects or their text, e.g.
    SMILES) and save it to ``out``; return ``out``. Objects the domain cannot encode raise its error."""
    from design.api import Generator

    if not objs:
        raise ValueError("fine-tuning needs at least one object; the campaign has no candidates to learn from")
    t0 = time.time()
    blob = load_checkpoint(checkpoint)
    gen = Generator.from_checkpoint(checkpoint)
    model, domain, dev = gen.model, gen.domain, gen.device
    tensors = domain.encode(list(objs)).to(dev)
    beta = gen.config.train.beta_kl
    with torch.no_grad():
        cond = model.discriminator(domain.real_batch(tensors)).properties  # standardised, what D reads
    params = list(model.encoder.parameters()) + list(model.generator.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    rng = torch.Generator().manual_seed(int(seed))
    losses = []
    model.train()
    model.discriminator.requires_grad_(False)
    for _ in range(epochs):
        order = torch.randperm(len(tensors), generator=rng).to(dev)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            t = tensors.subset(idx)
            mu, logvar = model.encoder(t)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            rec = model.generator.head.reconstruction_loss(model.generator(z, cond[idx]), t)
            kl = gaussian_kl(mu, logvar)
            loss = sum(rec.values()) + beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
    model.eval()
    blob["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    step = {"from": str(checkpoint), "objects": len(objs), "epochs": epochs, "lr": lr, "steps": len(losses),
            "loss_first": losses[0], "loss_last": losses[-1], "wall_s": time.time() - t0}
    blob["finetune"] = [*blob.get("finetune", []), step]
    path = save_checkpoint(out, blob)
    log.info("fine-tuned %s on %d objects: loss %.2f -> %.2f in %d steps (%.1fs)", Path(checkpoint).name, len(objs),
             step["loss_first"], step["loss_last"], step["steps"], step["wall_s"])
    return path
