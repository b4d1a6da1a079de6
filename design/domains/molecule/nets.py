"""Molecule-specific network parts composed by the domain-agnostic VAE-GAN.

Shapes: B = batch, T = L + 1 token positions, V = vocabulary size, E = ``model.site_dim``
(token embedding width), H = ``model.hidden`` (trunk width, also the GRU width).

* :class:`TokenEncoderBody`: hard tokens [B, T] -> dilated 1-D convolutions -> pooled [B, H].
* :class:`TokenDecoderHead`: the trunk's [B, H] -> an autoregressive GRU over SELFIES tokens
  (the trunk vector feeds every step). ``reconstruction_loss`` is the teacher-forced negative
  log-likelihood; ``sample`` decodes free-running with straight-through Gumbel-softmax tokens
  (one-hot forward, soft gradients backward, each step fed the soft token's embedding), so
  discriminator and penalty gradients reach the generator through every choice.
* :class:`TokenDiscBody`: soft tokens [B, T, V] -> dilated 1-D convolutions written as linear
  maps over windows (so spectral normalisation covers them) -> pooled [B, F].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from design.config import ModelConfig
from design.domains.molecule.tokens import MoleculeBatch, MoleculeTensors
from design.models.discrete import gumbel, gumbel_index, straight_through


class TokenEncoderBody(nn.Module):
    """Real molecules (hard tensors) -> [B, hidden]: embedded tokens, ``encoder_layers`` residual
    dilated convolutions (dilations 1, 2, 4, ...), masked mean and max pooling. Convolutions see
    every position at once, which on a CPU is several times faster than a recurrent encoder."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, n_positions: int):
        super().__init__()
        d = cfg.site_dim
        self.embed = nn.Embedding(vocab_size, d)
        self.position = nn.Parameter(torch.randn(n_positions, d) * 0.02)
        self.convs = nn.ModuleList(_WindowConv(d, 3, 2**i) for i in range(cfg.encoder_layers))
        self.out = nn.Sequential(nn.Linear(2 * d + 1, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))

    def forward(self, t: MoleculeTensors) -> torch.Tensor:
        lengths = t.lengths().clamp(min=1)
        tokens = t.tokens[:, : int(lengths.max())]
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]).float()
        x = (self.embed(tokens) + self.position[None, : tokens.shape[1]]) * mask[..., None]
        for conv in self.convs:
            x = conv(x, mask)
        return self.out(_pool(x, mask, t.tokens.shape[1]))


def _pool(x: torch.Tensor, mask: torch.Tensor, n_positions: int) -> torch.Tensor:
    """[B, T, d] features, [B, T] mask -> [B, 2 d + 1]: masked mean, masked max, length / positions."""
    n = mask.sum(1, keepdim=True)
    mean = x.sum(1) / n.clamp(min=1e-3)
    peak = (x - 1e3 * (1 - mask[..., None])).amax(1)
    return torch.cat([mean, peak, n / n_positions], dim=1)


class TokenDecoderHead(nn.Module):
    """[B, hidden] -> ``{"h": [B, hidden]}``; ``sample`` and ``reconstruction_loss`` run the GRU."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_tokens: int, first_allowed: torch.Tensor | None = None):
        super().__init__()
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        # tokens a molecule may start with (atoms: a leading branch, ring or end token would be
        # skipped or leave the molecule empty); derived from the vocabulary, so not saved
        allowed = torch.ones(vocab_size, dtype=torch.bool) if first_allowed is None else first_allowed.bool()
        allowed = allowed.clone()
        allowed[0] = False
        self.register_buffer("first_allowed", allowed, persistent=False)
        self.layers = cfg.decoder_layers
        h = cfg.hidden
        self.embed = nn.Parameter(torch.randn(vocab_size, cfg.site_dim) * 0.1)  # soft tokens @ embed
        self.start = nn.Parameter(torch.zeros(cfg.site_dim))
        self.init = nn.Linear(h, self.layers * h)
        self.gru = nn.GRU(cfg.site_dim + h, h, self.layers, batch_first=True)
        self.out = nn.Linear(h, vocab_size)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": h}

    def _h0(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.init(h)).view(h.shape[0], self.layers, -1).transpose(0, 1).contiguous()

    def logits(self, raw: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits [B, T', V] for the first T' positions of ``tokens`` [B, T']."""
        h = raw["h"]
        bsz, steps = tokens.shape
        prev = torch.cat([self.start.expand(bsz, 1, -1), self.embed[tokens[:, :-1]]], dim=1)
        inp = torch.cat([prev, h[:, None].expand(bsz, steps, -1)], dim=2)
        out, _ = self.gru(inp, self._h0(h))
        return self.out(out)

    def reconstruction_loss(self, raw: dict[str, torch.Tensor], t: MoleculeTensors) -> dict[str, torch.Tensor]:
        """``tokens``: negative log-likelihood of each molecule's tokens and its end token,
        summed per molecule, averaged over the batch (the per-sample scale of the KL term)."""
        return self.reconstruct(raw, t, tau=1.0, sample=False)[0]

    def reconstruct(
        self, raw: dict[str, torch.Tensor], t: MoleculeTensors, tau: float = 1.0, sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], MoleculeBatch | None]:
        """Teacher-forced likelihood terms and, with ``sample``, a soft reconstruction drawn from the
        same teacher-forced logits (straight-through Gumbel per position, one network pass)."""
        steps = int(t.lengths().max()) + 1  # through the first end token
        tokens = t.tokens[:, :steps]
        logits = self.logits(raw, tokens)
        inside = torch.ones_like(tokens, dtype=torch.bool)
        inside[:, 1:] = tokens[:, :-1] != 0  # positions up to and including the end token
        nll = F.cross_entropy(logits.reshape(-1, self.vocab_size), tokens.reshape(-1), reduction="none")
        loss = {"tokens": (nll.view_as(tokens) * inside).sum() / tokens.shape[0]}
        if not sample:
            return loss, None
        st = straight_through(*gumbel(logits, tau, generator))
        return loss, self._finish(st, t.tokens.shape[1])

    def _finish(self, st: torch.Tensor, total: int) -> MoleculeBatch:
        """Positions after the first end token become end tokens; pad to ``total`` positions."""
        idx = st.detach().argmax(-1)
        alive = (idx != 0).long().cumprod(1)
        before = torch.ones_like(alive)
        before[:, 1:] = alive[:, :-1]  # the end token itself stays as sampled
        end = F.one_hot(torch.zeros_like(idx), self.vocab_size).to(st.dtype)
        keep = before[..., None].to(st.dtype)
        st = st * keep + end * (1 - keep)
        if st.shape[1] < total:
            pad = F.one_hot(torch.zeros(st.shape[0], total - st.shape[1], dtype=torch.long, device=st.device),
                            self.vocab_size).to(st.dtype)
            st = torch.cat([st, pad], dim=1)
        return MoleculeBatch(st)

    def sample(
        self,
        raw: dict[str, torch.Tensor],
        tau: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        constrained: bool = False,
    ) -> MoleculeBatch:
        """Free-running decoding of up to ``max_tokens`` tokens: [B, max_tokens + 1, V] soft batch.

        The first token is an atom (never the end token, so no molecule is empty). ``constrained``
        is accepted for the generator API and changes nothing here: SELFIES needs no decoding rules
        to be valence-valid (the domain's rule on whole sequences, opening macrocycles, runs after:
        ``MoleculeDomain.decoding_rules``). Without autograd (sampling, monitors) finished molecules leave the batch
        (:meth:`_sample_hard`), so the cost follows the mean length rather than the longest.
        """
        h = raw["h"]
        if not torch.is_grad_enabled():
            return self._sample_hard(h, temperature, generator)
        hx = list(self._h0(h))
        gates = self._input_gates(h)
        gi = gates["start"].expand(h.shape[0], -1) + gates["trunk"]
        done = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
        steps = []
        for step in range(self.max_tokens):
            out = self._cell(gi, hx)
            soft, idx = gumbel(self._first_logits(self.out(out) / temperature, step), tau, generator)
            st = straight_through(soft, idx)
            steps.append(st)
            done = done | (idx == 0)
            if bool(done.all()):
                break
            gi = st @ gates["token"] + gates["trunk"]
        return self._finish(torch.stack(steps, dim=1), self.max_tokens + 1)

    def _first_logits(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        return logits.masked_fill(~self.first_allowed, float("-inf")) if step == 0 else logits

    def _sample_hard(self, h: torch.Tensor, temperature: float, generator: torch.Generator | None) -> MoleculeBatch:
        """The same sampler without gradients: one-hot tokens, only unfinished rows computed."""
        bsz = h.shape[0]
        tokens = torch.zeros(bsz, self.max_tokens + 1, dtype=torch.long, device=h.device)
        rows = torch.arange(bsz, device=h.device)
        hx = list(self._h0(h))
        gates = self._input_gates(h)
        trunk = gates["trunk"]
        gi = gates["start"] + trunk
        for step in range(self.max_tokens):
            out = self._cell(gi, hx)
            # the argmax of Gumbel-perturbed logits is the sample
            idx = gumbel_index(self._first_logits(self.out(out) / temperature, step), generator)
            tokens[rows, step] = idx
            going = (idx != 0).nonzero().squeeze(1)
            if len(going) == 0:
                break
            if len(going) < len(rows):
                rows, trunk, idx = rows[going], trunk[going], idx[going]
                hx = [x[going] for x in hx]
            gi = gates["token"][idx] + trunk
        return MoleculeBatch(F.one_hot(tokens, self.vocab_size).to(h.dtype))

    def _input_gates(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The first GRU layer's input-gate pre-activations split by source: the input is the
        token embedding next to the trunk vector ``h`` [B, H], so per token [V, 3H] (``token``; the
        start token's [3H] is ``start``) and per molecule [B, 3H] (``trunk``, with the input bias)
        are computed once, and a sampling step only looks rows up instead of multiplying
        [B, E + H] by [E + H, 3H]."""
        w = self.gru.weight_ih_l0
        e = self.embed.shape[1]
        return {
            "token": self.embed @ w[:, :e].T,
            "start": self.start @ w[:, :e].T,
            "trunk": F.linear(h, w[:, e:], self.gru.bias_ih_l0),
        }

    def _cell(self, gi: torch.Tensor, hx: list[torch.Tensor]) -> torch.Tensor:
        """One step of ``self.gru`` (the same equations and weights as ``nn.GRU``) given the first
        layer's input gates ``gi`` [B, 3H]; updates the per-layer states ``hx`` in place and returns
        the top layer's output [B, H]."""
        for layer in range(self.layers):
            if layer:
                gi = F.linear(hx[layer - 1], getattr(self.gru, f"weight_ih_l{layer}"), getattr(self.gru, f"bias_ih_l{layer}"))
            gh = F.linear(hx[layer], getattr(self.gru, f"weight_hh_l{layer}"), getattr(self.gru, f"bias_hh_l{layer}"))
            width = gh.shape[1] // 3
            r, z = torch.sigmoid(gi[:, : 2 * width] + gh[:, : 2 * width]).chunk(2, 1)
            n = torch.tanh(gi[:, 2 * width :] + r * gh[:, 2 * width :])
            hx[layer] = torch.lerp(n, hx[layer], z)  # (1 - z) n + z h
        return hx[-1]


class _WindowConv(nn.Module):
    """Residual dilated 1-D convolution over positions as a linear map of each window."""

    def __init__(self, d: int, kernel: int, dilation: int):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.lin = nn.Linear(kernel * d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pad = self.dilation * (self.kernel // 2)
        xp = F.pad(x.transpose(1, 2), (pad, pad))  # [B, d, T + 2 pad]
        win = xp.unfold(2, self.dilation * (self.kernel - 1) + 1, 1)[..., :: self.dilation]  # [B, d, T, k]
        win = win.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[1], -1)
        return (x + F.leaky_relu(self.lin(win), 0.2)) * mask[..., None]


class TokenDiscBody(nn.Module):
    """Soft token batch -> [B, feature_dim] (masked mean and max pooling, plus the expected length)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, n_positions: int, feature_dim: int):
        super().__init__()
        d = cfg.disc_dim
        self.embed = nn.Linear(vocab_size, d, bias=False)
        self.position = nn.Parameter(torch.randn(n_positions, d) * 0.02)
        self.convs = nn.ModuleList(_WindowConv(d, 3, 2**i) for i in range(cfg.disc_layers))
        self.out = nn.Sequential(nn.Linear(2 * d + 1, feature_dim), nn.LeakyReLU(0.2),
                                 nn.Linear(feature_dim, feature_dim), nn.LeakyReLU(0.2))

    def forward(self, batch: MoleculeBatch) -> torch.Tensor:
        p = batch.tokens
        mask = batch.alive  # [B, T] probability of being inside the molecule
        x = (self.embed(p) + self.position[None, : p.shape[1]]) * mask[..., None]
        for conv in self.convs:
            x = conv(x, mask)
        return self.out(_pool(x, mask, p.shape[1]))
