"""Molecule-specific network parts composed by the domain-agnostic VAE-GAN.

Shapes: B = batch, T = L + 1 token positions, V = vocabulary size, E = ``model.site_dim``
(token embedding width), H = ``model.hidden`` (trunk width, also the GRU width).

* :class:`TokenEncoderBody`: hard tokens [B, T] -> dilated 1-D convolutions -> pooled [B, H].
* :class:`TokenDecoderHead`: the trunk's [B, H] -> an autoregressive GRU over SELFIES tokens
  (the trunk vector feeds every step). ``reconstruction_loss`` is the teacher-forced negative
  log-likelihood; ``sample`` decodes free-running with straight-through Gumbel-softmax tokens
  (one-hot forward, soft gradients backward, each step fed the soft token's embedding), so
  discriminator and penalty gradients reach the generator through every choice. With
  ``model.grammar_features`` every step also reads the SELFIES derivation of the tokens so far
  (``grammar.Derivation.features``: ``grammar.n_features(model.grammar_valence)`` inputs; the
  samplers take them as ``Derivation.feature_index`` and sum the input weights' rows there).
* :class:`TokenTransformerHead` (``model.decoder: transformer``): the same interface with a causal
  transformer of width E. Both share :class:`_TokenHead` (likelihood, soft reconstruction, the
  samplers and constrained decoding), written over four per-step hooks.
* :class:`TokenDiscBody`: soft tokens [B, T, V] -> dilated 1-D convolutions written as linear
  maps over windows (so spectral normalisation covers them) -> pooled [B, F].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from design.config import ModelConfig
from design.domains.molecule.grammar import Derivation, SelfiesGrammar, dense_features, n_features
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


class _TokenHead(nn.Module):
    """What the GRU and transformer decoders share: the likelihood terms, the soft reconstruction,
    and the free-running samplers written once over four hooks of the subclass: ``_begin(h, feats)``
    -> a decoding state, ``_step_logits(state)`` -> next-token logits [B, V], ``_feed(state, tokens,
    feats)`` (soft [B, V] with autograd, else indices [B]; ``feats`` the derivation features of that
    input as ``Derivation.feature_index`` [B, K], or None) and ``_keep(state, rows)`` (drop finished
    rows)."""

    compact_below = 1.0  # drop finished rows once the alive fraction falls below this (1.0: at once)

    def __init__(self, vocab_size: int, max_tokens: int, first_allowed: torch.Tensor | None = None,
                 grammar: SelfiesGrammar | None = None, grammar_features: bool = False,
                 grammar_valence: bool = False):
        super().__init__()
        if grammar_features and grammar is None:
            raise ValueError("model.grammar_features needs the vocabulary's SELFIES grammar")
        # the SELFIES derivation of the tokens so far: its features feed the decoder at every step
        # (``grammar_features``) and, in constrained sampling, it forbids macrocycle ring indices
        self.grammar = grammar
        self.grammar_features = grammar_features
        self.grammar_valence = grammar_valence  # the features' valence part (grammar.n_features)
        self.n_features = n_features(grammar_valence) if grammar_features else 0
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        # tokens a molecule may start with (atoms: a leading branch, ring or end token would be
        # skipped or leave the molecule empty); derived from the vocabulary, so not saved
        allowed = torch.ones(vocab_size, dtype=torch.bool) if first_allowed is None else first_allowed.bool()
        allowed = allowed.clone()
        allowed[0] = False
        self.register_buffer("first_allowed", allowed, persistent=False)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"h": h}

    def logits(self, raw: dict[str, torch.Tensor], tokens: torch.Tensor,
               features: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced next-token logits [B, T', V] for the first T' positions of ``tokens`` [B, T']
        (``features``: their derivation features' indices [B, T', K] when worked out before, else
        derived here)."""
        raise NotImplementedError

    def with_teacher_features(self, t: MoleculeTensors, chunk: int = 4096) -> MoleculeTensors:
        """``t`` with its teacher-forced derivation features worked out once (``t.features``, uint8
        indices), so training epochs read them instead of deriving every batch again; ``t`` itself
        when the decoder reads no features."""
        if not self.grammar_features:
            return t
        if n_features(self.grammar_valence) > 255:
            raise ValueError("derivation feature indices above 255 do not fit the uint8 cache")
        parts = [self.grammar.run_index(t.tokens[i : i + chunk], self.grammar_valence).to(torch.uint8)
                 for i in range(0, len(t), chunk)]
        return MoleculeTensors(t.tokens, t.vocab, torch.cat(parts))

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
        logits = self.logits(raw, tokens, None if t.features is None else t.features[:, :steps])
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

        The first token is an atom (never the end token, so no molecule is empty). SELFIES needs no
        rule to be valence-valid; with ``constrained`` the sampler without autograd never draws a
        one-index ring token's size index that closes a macrocycle (``Derivation.forbidden``; the
        domain's rule on whole sequences runs after: ``MoleculeDomain.decoding_rules``). Without
        autograd (sampling, monitors) finished molecules leave the batch (:meth:`_sample_hard`), so
        the cost follows the mean length rather than the longest.
        """
        h = raw["h"]
        if not torch.is_grad_enabled():
            return self._sample_hard(h, temperature, generator, constrained)
        derivation = self._derivation(h, False)
        state = self._begin(h, self._features(derivation))
        done = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
        steps = []
        for step in range(self.max_tokens):
            logits = self._step_logits(state)
            soft, idx = gumbel(self._first_logits(logits / temperature, step), tau, generator)
            st = straight_through(soft, idx)
            steps.append(st)
            done = done | (idx == 0)
            if bool(done.all()):
                break
            if derivation is not None:
                derivation.step(idx)
            self._feed(state, st, self._features(derivation))
        return self._finish(torch.stack(steps, dim=1), self.max_tokens + 1)

    def _derivation(self, h: torch.Tensor, constrained: bool) -> Derivation | None:
        """A derivation of the rows to be sampled, when the features or the constraint need one."""
        if self.grammar is None or not (self.grammar_features or constrained):
            return None
        return self.grammar.start(h.shape[0], self.max_tokens + 1, h.device)

    def _features(self, derivation: Derivation | None) -> torch.Tensor | None:
        """The sampler's derivation features, as the indices of their ones (``feature_index``)."""
        if not self.grammar_features or derivation is None:
            return None
        return derivation.feature_index(self.grammar_valence)

    def _feature_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """[n_features + 1, D]: ``weight`` [D, n_features] (what multiplies the dense features)
        transposed, with a zero row at index n_features, which ``feature_index`` gives a group that
        has no one."""
        return torch.cat([weight.T, weight.new_zeros(1, weight.shape[0])])

    @staticmethod
    def _feature_sum(index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[B, D] sum of ``rows`` at each row's indices [B, K]: the dense features times the weight,
        without the product over their zeros. The padding is a zero row summed like the others
        (``embedding_bag``'s ``padding_idx`` measured 3x slower on CPU)."""
        return F.embedding_bag(index, rows, mode="sum")

    def _teacher_features(self, tokens: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor | None:
        """[B, T, n_features] derivation features before each teacher-forcing position (from their
        indices ``index`` when given), or None."""
        if not self.grammar_features:
            return None
        with torch.no_grad():
            if index is None:
                index = self.grammar.run_index(tokens, self.grammar_valence)
            return dense_features(index, self.grammar_valence)

    def _first_logits(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        return logits.masked_fill(~self.first_allowed, float("-inf")) if step == 0 else logits

    def _sample_hard(self, h: torch.Tensor, temperature: float, generator: torch.Generator | None,
                     constrained: bool = False) -> MoleculeBatch:
        """The same sampler without gradients: one-hot tokens; finished rows stop being computed
        once fewer than ``compact_below`` of the batch's rows are alive. The derivation's graphs of
        the rows go with the batch (``MoleculeBatch.graph``), for the decoder not to derive them again."""
        bsz = h.shape[0]
        tokens = torch.zeros(bsz, self.max_tokens + 1, dtype=torch.long, device=h.device)
        rows = torch.arange(bsz, device=h.device)
        alive = torch.ones(bsz, dtype=torch.bool, device=h.device)
        derivation = self._derivation(h, constrained)
        state = self._begin(h, self._features(derivation))
        for step in range(self.max_tokens):
            logits = self._step_logits(state)
            forbidden = derivation.forbidden() if (constrained and derivation is not None) else None
            if forbidden is not None:
                logits = logits.masked_fill(forbidden, float("-inf"))
            # the argmax of Gumbel-perturbed logits is the sample
            idx = gumbel_index(self._first_logits(logits / temperature, step), generator).masked_fill(~alive, 0)
            tokens[rows, step] = idx
            alive = alive & (idx != 0)
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if derivation is not None:
                derivation.step(idx)
            if n_alive < self.compact_below * len(rows):
                going = alive.nonzero().squeeze(1)
                rows, idx, alive = rows[going], idx[going], alive[going]
                self._keep(state, going)
                if derivation is not None:
                    derivation.keep(going)
            self._feed(state, idx, self._features(derivation))
        graph = None
        if derivation is not None:  # each row reads its end token (the last may not have), then hands its graph on
            derivation.step(torch.zeros(len(rows), dtype=torch.long, device=h.device))
            graph = derivation.graph()
        return MoleculeBatch.hard(tokens, self.vocab_size, h.dtype, graph)

    # hooks (``feats``: [B, K] ``feature_index`` of the next input's derivation features, or None)
    def _begin(self, h: torch.Tensor, feats: torch.Tensor | None) -> dict:
        raise NotImplementedError

    def _step_logits(self, state: dict) -> torch.Tensor:
        raise NotImplementedError

    def _feed(self, state: dict, tokens: torch.Tensor, feats: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _keep(self, state: dict, rows: torch.Tensor) -> None:
        raise NotImplementedError


class TokenDecoderHead(_TokenHead):
    """[B, hidden] -> ``{"h": [B, hidden]}``; an autoregressive GRU fed the trunk vector at every step."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_tokens: int, first_allowed: torch.Tensor | None = None,
                 grammar: SelfiesGrammar | None = None):
        super().__init__(vocab_size, max_tokens, first_allowed, grammar, cfg.grammar_features, cfg.grammar_valence)
        self.layers = cfg.decoder_layers
        h = cfg.hidden
        self.embed = nn.Parameter(torch.randn(vocab_size, cfg.site_dim) * 0.1)  # soft tokens @ embed
        self.start = nn.Parameter(torch.zeros(cfg.site_dim))
        self.init = nn.Linear(h, self.layers * h)
        # input: token embedding, trunk vector, derivation features (with grammar_features)
        self.gru = nn.GRU(cfg.site_dim + h + self.n_features, h, self.layers, batch_first=True)
        self.out = nn.Linear(h, vocab_size)

    def _h0(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.init(h)).view(h.shape[0], self.layers, -1).transpose(0, 1).contiguous()

    def logits(self, raw: dict[str, torch.Tensor], tokens: torch.Tensor,
               features: torch.Tensor | None = None) -> torch.Tensor:
        h = raw["h"]
        bsz, steps = tokens.shape
        prev = torch.cat([self.start.expand(bsz, 1, -1), self.embed[tokens[:, :-1]]], dim=1)
        parts = [prev, h[:, None].expand(bsz, steps, -1)]
        feats = self._teacher_features(tokens, features)
        if feats is not None:
            parts.append(feats)
        out, _ = self.gru(torch.cat(parts, dim=2), self._h0(h))
        return self.out(out)

    def _begin(self, h: torch.Tensor, feats: torch.Tensor | None) -> dict:
        gates = self._input_gates(h)
        state = {"hx": list(self._h0(h)), "token": gates["token"], "trunk": gates["trunk"],
                 "gi": gates["start"] + gates["trunk"]}
        if feats is not None:
            # one table of input-gate rows: the tokens' [V, 3H], then the features' [n_features + 1, 3H]
            # (zero padding row last), so a hard step's token and features are one indexed sum
            rows = self._feature_rows(self.gru.weight_ih_l0[:, -self.n_features :])
            state["table"] = torch.cat([gates["token"], rows])
            state["gi"] = state["gi"] + self._feature_sum(feats + self.vocab_size, state["table"])
        return state

    def _step_logits(self, state: dict) -> torch.Tensor:
        return self.out(self._cell(state["gi"], state["hx"]))

    def _feed(self, state: dict, tokens: torch.Tensor, feats: torch.Tensor | None) -> None:
        if feats is None:
            rows = tokens @ state["token"] if tokens.is_floating_point() else state["token"][tokens]
        elif tokens.is_floating_point():  # soft tokens (autograd): their product, plus the features' rows
            rows = tokens @ state["token"] + self._feature_sum(feats + self.vocab_size, state["table"])
        else:  # the token's row and the features' rows, summed in one pass
            rows = self._feature_sum(torch.cat([tokens[:, None], feats + self.vocab_size], dim=1), state["table"])
        state["gi"] = rows + state["trunk"]

    def _keep(self, state: dict, rows: torch.Tensor) -> None:
        state["trunk"] = state["trunk"][rows]
        state["hx"] = [x[rows] for x in state["hx"]]

    def _input_gates(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The first GRU layer's input-gate pre-activations split by source: the input is the
        token embedding next to the trunk vector ``h`` [B, H], so per token [V, 3H] (``token``; the
        start token's [3H] is ``start``) and per molecule [B, 3H] (``trunk``, with the input bias)
        are computed once, and a sampling step only looks rows up instead of multiplying
        [B, E + H] by [E + H, 3H]."""
        w = self.gru.weight_ih_l0
        e = self.embed.shape[1]
        trunk = w[:, e : e + h.shape[1]]
        return {
            "token": self.embed @ w[:, :e].T,
            "start": self.start @ w[:, :e].T,
            "trunk": F.linear(h, trunk, self.gru.bias_ih_l0),
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
            hx[layer] = torch.lerp(n, hx[layer].to(n.dtype), z.to(n.dtype))  # (1 - z) n + z h (one dtype under autocast)
        return hx[-1]


class TokenTransformerHead(_TokenHead):
    """[B, hidden] -> ``{"h": [B, hidden]}``; a causal transformer over SELFIES tokens (width
    ``site_dim``, ``decoder_layers`` pre-norm blocks of ``heads`` attention heads, learnt absolute
    positions), the trunk vector projected and added at every position. Attention sees every earlier
    token, so the counts SELFIES asks for (a ring token's index counts atoms back, a branch token's
    counts the tokens of its branch) need not be carried in a recurrent state. Sampling keeps each
    block's keys and values, so a step costs one position."""

    compact_below = 0.75  # dropping rows copies the key/value caches: only when a quarter finished

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_tokens: int, first_allowed: torch.Tensor | None = None,
                 grammar: SelfiesGrammar | None = None):
        super().__init__(vocab_size, max_tokens, first_allowed, grammar, cfg.grammar_features, cfg.grammar_valence)
        d = cfg.site_dim
        self.embed = nn.Parameter(torch.randn(vocab_size, d) * 0.1)  # soft tokens @ embed
        self.start = nn.Parameter(torch.zeros(d))
        self.position = nn.Parameter(torch.randn(max_tokens + 1, d) * 0.02)
        self.cond = nn.Linear(cfg.hidden, d)
        self.feature_in = nn.Linear(self.n_features, d, bias=False) if self.grammar_features else None
        self.blocks = nn.ModuleList(_CausalBlock(d, cfg.heads) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab_size)

    def logits(self, raw: dict[str, torch.Tensor], tokens: torch.Tensor,
               features: torch.Tensor | None = None) -> torch.Tensor:
        h = raw["h"]
        bsz, steps = tokens.shape
        prev = torch.cat([self.start.expand(bsz, 1, -1), self.embed[tokens[:, :-1]]], dim=1)
        x = prev + self.position[None, :steps] + self.cond(h)[:, None]
        feats = self._teacher_features(tokens, features)
        if feats is not None:
            x = x + self.feature_in(feats)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))

    def _begin(self, h: torch.Tensor, feats: torch.Tensor | None) -> dict:
        cond = self.cond(h)
        x = self.start + self.position[0] + cond
        state = {"cond": cond, "x": x, "t": 0, "cache": [None] * len(self.blocks)}
        if feats is not None:
            state["features"] = self._feature_rows(self.feature_in.weight)
            state["x"] = x + self._feature_sum(feats, state["features"])
        return state

    def _step_logits(self, state: dict) -> torch.Tensor:
        x = state["x"][:, None]
        for i, block in enumerate(self.blocks):
            x, state["cache"][i] = block(x, state["cache"][i])
        state["t"] += 1
        return self.out(self.norm(x[:, 0]))

    def _feed(self, state: dict, tokens: torch.Tensor, feats: torch.Tensor | None) -> None:
        emb = tokens @ self.embed if tokens.is_floating_point() else self.embed[tokens]
        state["x"] = emb + self.position[state["t"]] + state["cond"]
        if feats is not None:
            state["x"] = state["x"] + self._feature_sum(feats, state["features"])

    def _keep(self, state: dict, rows: torch.Tensor) -> None:
        state["cond"] = state["cond"][rows]
        state["cache"] = [(k[rows], v[rows]) for k, v in state["cache"]]


class _CausalBlock(nn.Module):
    """Pre-norm transformer block with causal self-attention; with a ``cache`` (keys, values of
    the earlier positions, or None at the first step) it runs one new position and returns the
    grown cache too."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.n2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None | bool = False):
        bsz, steps, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(bsz, steps, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        incremental = cache is not False
        if incremental and cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=not incremental)
        x = x + self.proj(a.transpose(1, 2).reshape(bsz, steps, d))
        x = x + self.ff(self.n2(x))
        return (x, (k, v)) if incremental else x


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
