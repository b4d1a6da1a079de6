"""Crystal-specific network parts composed by the domain-agnostic VAE-GAN.

* :class:`CrystalEncoderBody`: a transformer over occupied sites (element embedding plus
  sin/cos of fractional coordinates), mean-pooled, joined with lattice features.
* :class:`CrystalDecoderHead`: one shot from the trunk's [B, H] vector to a palette of K
  elements and ``S`` site slots (learned slot embeddings + self-attention), each slot choosing
  empty or a palette entry and a (cos, sin) pair per fractional coordinate (wrap-aware), plus six
  lattice numbers.
* :class:`CrystalDiscBody`: a continuous-filter graph network over periodic distances (27
  images), so the discriminator is invariant to site order, origin and rotation by construction;
  it takes species as probabilities so gradients reach the generator's element choices.

Lattice numbers are standardised by :class:`LatticeScaler`: the lower-triangular lattice divided
by N^(1/3) (log of the diagonal), so that whatever the generator outputs is a valid cell.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from design.config import ModelConfig
from design.domains.crystal.constrain import (
    charge_balanced_palette,
    drop_overlapping_sites,
    place_unplaced_elements,
    rescale_to_volume,
)
from design.domains.crystal.elements import N_SPECIES
from design.domains.crystal.tensors import (
    CrystalBatch,
    CrystalTensors,
    image_distances,
    self_pair_mask,
)
from design.models.discrete import gumbel as _gumbel
from design.models.discrete import gumbel_index
from design.models.discrete import straight_through as _straight_through

TWO_PI = 2 * math.pi


class LatticeScaler(nn.Module):
    """Lattice [B, 6] (lower-triangular, Angstrom) and atom counts [B] <-> standardised [B, 6].

    The features are the lattice divided by N^(1/3) with the log of its diagonal, each shifted and
    scaled by training-set statistics. Every feature vector maps back to a valid cell.
    """

    LOG_DIAG = (0, 2, 5)  # positions of l11, l22, l33

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    @classmethod
    def raw_features(cls, lattice: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        f = lattice / n_atoms.clamp(min=1.0).pow(1.0 / 3.0)[:, None]
        l11, l21, l22, l31, l32, l33 = f.unbind(1)
        logd = [torch.log(x.abs().clamp(min=1e-4)) for x in (l11, l22, l33)]
        return torch.stack([logd[0], l21, logd[1], l31, l32, logd[2]], dim=1)

    def to_std(self, lattice: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        return (self.raw_features(lattice, n_atoms) - self.mean) / self.std

    def from_std(self, x: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        raw = x * self.std + self.mean
        d1, l21, d2, l31, l32, d3 = raw.unbind(1)
        l11, l22, l33 = (torch.exp(d.clamp(-4.0, 4.0)) for d in (d1, d2, d3))
        scale = n_atoms.clamp(min=1.0).pow(1.0 / 3.0)[:, None]
        return torch.stack([l11, l21, l22, l31, l32, l33], dim=1) * scale


def mlp(sizes: list[int], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h [B, S, D], mask [B, S] (float weights) -> [B, D]."""
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-6)


def _coord_features(frac: torch.Tensor) -> torch.Tensor:
    ang = TWO_PI * frac
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class CrystalEncoderBody(nn.Module):
    """Real crystals (hard tensors) -> [B, hidden]."""

    def __init__(self, cfg: ModelConfig, scaler: LatticeScaler):
        super().__init__()
        d = cfg.site_dim
        self.scaler = scaler
        self.embed = nn.Embedding(N_SPECIES, d)
        self.coord = nn.Linear(6, d)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.out = mlp([d + 7, cfg.hidden, cfg.hidden])

    def forward(self, t: CrystalTensors) -> torch.Tensor:
        mask = t.z > 0
        h = self.embed(t.z) + self.coord(_coord_features(t.frac))
        h = self.transformer(h, src_key_padding_mask=~mask)
        m = mask.float()
        n = m.sum(1)
        feats = [masked_mean(h, m), self.scaler.to_std(t.lattice, n), torch.log(n.clamp(min=1))[:, None]]
        return self.out(torch.cat(feats, dim=1))


def palette_targets(z: torch.Tensor, n_palette: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split site species into a per-crystal element palette and per-site palette indices.

    Args:
        z: [B, S] atomic numbers, 0 = empty.
        n_palette: palette size K.

    Returns:
        palette [B, K]: the distinct elements in order of first appearance (0 = unused entry);
        types [B, S]: 0 for an empty slot, else 1 + the palette index of the site's element.
    """
    n_slots = z.shape[1]
    earlier = torch.tril(torch.ones(n_slots, n_slots, dtype=torch.bool, device=z.device), diagonal=-1)
    seen = ((z[:, :, None] == z[:, None, :]) & earlier).any(2)
    new = (z > 0) & ~seen
    rank = new.long().cumsum(1) - 1
    if new.sum(1).max() > n_palette:
        raise ValueError(f"a crystal has {int(new.sum(1).max())} distinct elements, more than the palette size {n_palette}")
    palette = torch.zeros(z.shape[0], n_palette, dtype=torch.long, device=z.device)
    rows, cols = new.nonzero(as_tuple=True)
    palette[rows, rank[rows, cols]] = z[rows, cols]
    match = (z[:, :, None] == palette[:, None, :]) & (z[:, :, None] > 0)
    types = torch.where(z > 0, match.float().argmax(-1) + 1, torch.zeros_like(z))
    return palette, types


class CrystalDecoderHead(nn.Module):
    """[B, hidden] -> raw outputs; ``sample`` turns them into a differentiable :class:`CrystalBatch`.

    Composition first: the head draws a palette of K elements per crystal (entry 0 always an
    element, the others may be unused), then each of the S slots picks "empty" or a palette entry.
    A crystal therefore never has more than K distinct elements, and its element choices are made
    jointly rather than slot by slot. With ``model.site_count`` the number of sites N is drawn first
    from its own categorical head and the first N slots each pick a used palette entry, so the count
    is one joint choice (crystals come in whole formula units) instead of S independent ones.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        scaler: LatticeScaler,
        max_sites: int,
        allowed: torch.Tensor,
        n_palette: int,
        element_volume: list[float] | None = None,
    ):
        super().__init__()
        d = cfg.site_dim
        self.max_sites = max_sites
        self.n_palette = n_palette
        self.scaler = scaler
        allowed = allowed.bool().clone()
        palette_mask = allowed[None].repeat(n_palette, 1)  # [K, V]
        palette_mask[0, 0] = False  # the first palette entry is always an element
        self.register_buffer("palette_allowed", palette_mask)
        # fitted per-element volumes for constrained decoding; derived from the training data (the
        # domain state), so not part of the weights; None for checkpoints that predate them
        vols = None if element_volume is None else torch.tensor(element_volume, dtype=torch.float32)
        self.register_buffer("element_volume", vols, persistent=False)
        self.palette = mlp([cfg.hidden, cfg.hidden, n_palette * N_SPECIES])
        self.count = mlp([cfg.hidden, cfg.hidden, max_sites]) if cfg.site_count else None  # logits of N = 1..S
        self.to_slots = nn.Linear(cfg.hidden, max_sites * d)  # each slot reads its own view of h
        self.slot_embed = nn.Parameter(torch.randn(max_sites, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.decoder_layers, enable_nested_tensor=False)
        self.types = nn.Linear(d, n_palette + 1)
        self.coords = nn.Linear(d, 6)
        self.lattice = mlp([cfg.hidden + d, cfg.hidden, 6])

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        bsz = h.shape[0]
        palette = self.palette(h).view(bsz, self.n_palette, N_SPECIES).masked_fill(~self.palette_allowed, float("-inf"))
        slots = self.to_slots(h).view(bsz, self.max_sites, -1) + self.slot_embed[None]
        slots = self.transformer(slots)
        lat = self.lattice(torch.cat([h, slots.mean(1)], dim=1))
        out = {
            "palette_logits": palette,
            "type_logits": self.types(slots),
            "coord_vec": self.coords(slots).view(bsz, self.max_sites, 3, 2),  # (cos, sin) of 2 pi frac
            "lattice_std": lat,
        }
        if self.count is not None:
            out["count_logits"] = self.count(h)
        return out

    def sample(
        self,
        raw: dict[str, torch.Tensor],
        tau: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        constrained: bool = False,
    ) -> CrystalBatch:
        """Straight-through Gumbel samples of palette and site types: one-hot species forward,
        soft gradients backward. A slot pointing at an unused palette entry is empty; every sample
        gets at least one occupied site (palette entry 0 is always an element). ``constrained``
        applies the inference-time rules of :mod:`design.domains.crystal.constrain`."""
        pal_soft, pal_idx = _gumbel(raw["palette_logits"] / temperature, tau, generator)
        typ_logits = raw["type_logits"] / temperature
        if "count_logits" in raw:
            typ_soft, typ_idx = self._counted_types(raw["count_logits"] / temperature, typ_logits, pal_idx, tau, generator)
            typ_logits = typ_logits.clone()
            typ_logits[..., 0] = float("-inf")  # the count decides emptiness: confidences are over entries
        else:
            typ_soft, typ_idx = self._slot_types(typ_logits, pal_idx, tau, generator)
        vec = raw["coord_vec"]
        frac = torch.remainder(torch.atan2(vec[..., 1], vec[..., 0]) / TWO_PI, 1.0)
        # the N^(1/3) scale of the lattice is a convention: no gradient flows through the atom count
        n = (typ_idx > 0).sum(1).to(vec.dtype)
        lattice = self.scaler.from_std(raw["lattice_std"], n)
        if constrained:
            pal_idx, typ_idx, lattice = self._constrain(
                raw["palette_logits"] / temperature, typ_logits, pal_idx, typ_idx, frac, lattice
            )
        palette = _straight_through(pal_soft, pal_idx)  # [B, K, V]
        types = _straight_through(typ_soft, typ_idx)  # [B, S, K + 1]
        empty = F.one_hot(torch.zeros((), dtype=torch.long, device=palette.device), N_SPECIES).to(palette.dtype)
        species = types[..., :1] * empty + torch.einsum("bsk,bkv->bsv", types[..., 1:], palette)
        return CrystalBatch(species, frac, lattice)

    @staticmethod
    def _slot_types(
        typ_logits: torch.Tensor, pal_idx: torch.Tensor, tau: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(soft [B, S, K + 1], hard [B, S]) slot types drawn slot by slot: "empty" or a palette
        entry; a slot that points at an unused entry is empty, and a crystal left with no site gets
        palette entry 0 in the slot least likely to be empty."""
        typ_soft, typ_idx = _gumbel(typ_logits, tau, generator)
        entry_unused = torch.gather(pal_idx == 0, 1, (typ_idx - 1).clamp(min=0))  # [B, S]
        typ_idx = typ_idx.masked_fill((typ_idx > 0) & entry_unused, 0)
        empty_rows = (typ_idx == 0).all(1)
        if empty_rows.any():
            rows = empty_rows.nonzero().squeeze(1)
            slot = (1 - torch.softmax(typ_logits[rows], -1)[..., 0]).argmax(1)
            typ_idx[rows, slot] = 1
        return typ_soft, typ_idx

    def _counted_types(
        self,
        count_logits: torch.Tensor,
        typ_logits: torch.Tensor,
        pal_idx: torch.Tensor,
        tau: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(soft [B, S, K + 1], hard [B, S]) slot types with the count drawn first: N from
        ``count_logits`` [B, S], then a used palette entry for each of the first N slots.

        The occupancy carries no gradient: the count is learnt from the likelihood alone. Measured:
        with a soft occupancy P(N > s), the physics penalty (which empty slots always satisfy) drove
        the count of prior samples down (30% drew one site; mean 5.6 sites against 9.5 in the test
        split)."""
        cnt_idx = gumbel_index(count_logits, generator)  # N = cnt_idx + 1
        occupied = torch.arange(self.max_sites, device=cnt_idx.device)[None] <= cnt_idx[:, None]
        # palette entry 0 is always an element, so every slot has an entry to take
        entry_logits = typ_logits[..., 1:].masked_fill((pal_idx == 0)[:, None, :], float("-inf"))
        ent_soft, ent_idx = _gumbel(entry_logits, tau, generator)
        typ_idx = torch.where(occupied, ent_idx + 1, torch.zeros_like(ent_idx))
        occ = occupied.to(ent_soft.dtype)[..., None]
        typ_soft = torch.cat([1 - occ, occ * ent_soft], dim=-1)
        return typ_soft, typ_idx

    def _constrain(
        self,
        logits: torch.Tensor,
        type_logits: torch.Tensor,
        pal_idx: torch.Tensor,
        typ_idx: torch.Tensor,
        frac: torch.Tensor,
        lattice: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rules of :mod:`design.domains.crystal.constrain`: overlapping sites dropped (the
        less confident of each pair) in the cell scaled for the drawn composition, a
        charge-balanced palette where one is near, the cell scaled to the composition's fitted
        volume (where the head has the table), and a last overlap pass in that cell."""
        def elements(pal: torch.Tensor, typ: torch.Tensor) -> torch.Tensor:  # [B, S] atomic numbers
            return torch.gather(pal, 1, (typ - 1).clamp(min=0)).masked_fill(typ == 0, 0)

        def scaled(pal: torch.Tensor, typ: torch.Tensor) -> torch.Tensor:
            if self.element_volume is None:
                return lattice
            return rescale_to_volume(elements(pal, typ), lattice, self.element_volume)

        def balanced(lp: torch.Tensor, pal: torch.Tensor, typ: torch.Tensor) -> torch.Tensor:
            counts = F.one_hot(typ, self.n_palette + 1)[..., 1:].sum(1)  # [B, K]
            return charge_balanced_palette(lp, pal, counts)[0].to(typ.device)

        log_palette = torch.log_softmax(logits, -1)
        type_prob = torch.softmax(type_logits, -1)
        typ_idx = place_unplaced_elements(pal_idx, typ_idx, type_prob)
        confidence = torch.gather(type_prob, 2, typ_idx[..., None]).squeeze(-1)
        keep = drop_overlapping_sites(elements(pal_idx, typ_idx), frac, scaled(pal_idx, typ_idx), confidence)
        typ_idx = typ_idx.masked_fill(~keep, 0)
        pal_idx = balanced(log_palette, pal_idx, typ_idx)
        lattice = scaled(pal_idx, typ_idx)
        keep = drop_overlapping_sites(elements(pal_idx, typ_idx), frac, lattice, confidence)
        rows = ((typ_idx > 0) & ~keep).any(1).nonzero().squeeze(1)
        if len(rows):
            typ_idx = typ_idx.masked_fill(~keep, 0)
            pal_idx[rows] = balanced(log_palette[rows], pal_idx[rows], typ_idx[rows])
        return pal_idx, typ_idx, lattice

    def reconstruction_loss(self, raw: dict[str, torch.Tensor], t: CrystalTensors) -> dict[str, torch.Tensor]:
        """Negative log-likelihood terms per crystal (summed over its parts, averaged over the batch),
        on the same per-sample scale as the KL term:

        * ``palette``: cross-entropy of the K palette entries (unused entries have target 0);
        * ``sites``: cross-entropy of each slot's type (empty or palette index), all slots; with the
          count head, ``count`` (cross-entropy of N) and ``sites`` over the occupied slots' entries;
        * ``coords``: wrap-aware ``1 - cos(2 pi (f_hat - f))`` summed over occupied slots and axes
          (a von Mises log-likelihood up to constants), plus ``(|v| - 1)^2`` for the (cos, sin)
          vector ``v``, which keeps the angle's gradient bounded;
        * ``lattice``: squared error of the six standardised lattice numbers, summed.
        """
        mask = t.z > 0
        bsz = t.z.shape[0]
        pal_target, type_target = palette_targets(t.z, self.n_palette)
        palette = F.cross_entropy(raw["palette_logits"].reshape(-1, N_SPECIES), pal_target.reshape(-1), reduction="sum")
        out = {}
        if "count_logits" in raw:
            out["count"] = F.cross_entropy(raw["count_logits"], mask.sum(1) - 1, reduction="sum") / bsz
            sites = F.cross_entropy(raw["type_logits"][..., 1:][mask], type_target[mask] - 1, reduction="sum")
        else:
            sites = F.cross_entropy(raw["type_logits"].reshape(-1, self.n_palette + 1), type_target.reshape(-1), reduction="sum")
        vec = raw["coord_vec"]
        norm = torch.linalg.vector_norm(vec, dim=-1)  # [B, S, 3]
        ang = TWO_PI * t.frac
        target = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)
        cos_err = 1 - (vec * target).sum(-1) / norm.clamp(min=1e-6)  # 1 - cos(2 pi (f_hat - f))
        # keeping |vec| near 1 bounds the gradient of atan2 (it grows as 1/|vec|) when sampling
        coords = (cos_err * mask[..., None]).sum() + ((norm - 1) ** 2 * mask[..., None]).sum()
        lat_target = self.scaler.to_std(t.lattice, mask.sum(1).float())
        lattice = F.mse_loss(raw["lattice_std"], lat_target, reduction="sum")
        out.update({"palette": palette / bsz, "sites": sites / bsz, "coords": coords / bsz, "lattice": lattice / bsz})
        return out


class _RBF(nn.Module):
    def __init__(self, n: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.gamma = 1.0 / (cutoff / (n - 1)) ** 2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        env = 0.5 * (torch.cos(math.pi * d.clamp(max=self.cutoff) / self.cutoff) + 1.0)
        return torch.exp(-self.gamma * (d[..., None] - self.centers) ** 2) * env[..., None]


class _Interaction(nn.Module):
    """Continuous-filter convolution: msg_i = sum_j (e_ij W) * v_j, with e_ij [R] radial features.

    Computed as sum_r W_r * (sum_j e_ijr v_j), which never builds the [B, S, S, d] filter tensor.
    """

    def __init__(self, d: int, n_rbf: int):
        super().__init__()
        self.filter = nn.Linear(n_rbf, d, bias=False)
        self.value = nn.Linear(d, d)
        self.update = mlp([2 * d, d, d])

    def forward(self, h: torch.Tensor, edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        v = self.value(h) * mask[..., None]  # [B, S, d]
        gathered = torch.einsum("bijr,bjd->bird", edges, v)  # [B, S, R, d]
        msg = (gathered * self.filter.weight.t()).sum(2)  # [B, S, d]
        return h + self.update(torch.cat([h, msg], dim=-1))


class CrystalDiscBody(nn.Module):
    """Soft crystal batch -> [B, feature_dim]; invariant to site permutation, origin and rotation."""

    def __init__(self, cfg: ModelConfig, feature_dim: int):
        super().__init__()
        d = cfg.disc_dim
        self.embed = nn.Linear(N_SPECIES, d, bias=False)
        self.rbf = _RBF(cfg.rbf, cfg.disc_cutoff)
        self.layers = nn.ModuleList(_Interaction(d, cfg.rbf) for _ in range(cfg.disc_layers))
        self.out = mlp([2 * d + 8, feature_dim, feature_dim], act=lambda: nn.LeakyReLU(0.2))

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        p = batch.species
        mask = batch.mask  # [B, S]
        bsz, n_slots = mask.shape
        d = image_distances(batch.frac, batch.lattice)  # [B, S, S, 27]
        # radial features only where they can be non-zero: occupied pairs within the cutoff
        occupied = mask > 0
        near = (d < self.rbf.cutoff) & (occupied[:, :, None] & occupied[:, None, :])[..., None]
        near &= ~self_pair_mask(n_slots, p.device)
        b, i, j, _ = near.nonzero(as_tuple=True)
        edges = torch.zeros(bsz, n_slots, n_slots, self.rbf.centers.numel(), device=p.device, dtype=d.dtype)
        edges = edges.index_put((b, i, j), self.rbf(d[near]), accumulate=True)
        h = self.embed(p)
        for layer in self.layers:
            h = layer(h, edges, mask)
        n = mask.sum(1)
        lat = LatticeScaler.raw_features(batch.lattice, n)
        # shortest distance between occupied sites (empty slots pushed out of reach)
        pair = (mask[:, :, None] * mask[:, None, :])[..., None]
        d_occ = (d + 1e3 * (1 - pair)).masked_fill(self_pair_mask(p.shape[1], p.device), 1e3)
        d_min = d_occ.amin(dim=(1, 2, 3)).clamp(max=5.0)
        glob = torch.cat([lat, torch.log(n.clamp(min=1e-3))[:, None], d_min[:, None]], dim=1)
        pooled = torch.cat([masked_mean(h, mask), (h * mask[..., None]).sum(1) / p.shape[1], glob], dim=1)
        return self.out(pooled)
