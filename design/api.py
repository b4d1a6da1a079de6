"""The generator API for downstream scripts.

    from design import load_generator
    g = load_generator("models:/crystal-generator@champion")   # or a path to generator.pt
    for cand in g.generate(100, seed=0, target={"formation_energy_per_atom": -2.0}):
        atoms = cand.to_ase()          # ASE Atoms, ready for a calculator
        structure = cand.structure     # pymatgen Structure

    m = load_generator("models:/molecule-generator@champion")
    for cand in m.generate(100, seed=0, target={"logp": 2.5}):
        cand.mol, cand.smiles          # RDKit Mol (sanitised when cand.check.structural), SMILES

The same seed gives the same structures (on the same device and library versions).
"""

from __future__ import annotations

import copy
import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from design.config import RunConfig, config_from_dict
from design.domains import build_domain
from design.domains.base import Candidate, Domain
from design.models import VAEGAN, build_model
from design.models.latent_prior import GaussianPrior, MixturePrior
from design.parallel import can_fork, forked_imap, usable_cpus
from design.training.checkpoint import CheckpointError, checkpoint_config, load_checkpoint
from design.utils import cyclic_gc_paused, resolve_device


class CrystalCandidate(Candidate):
    """A generated crystal: ``.structure`` (pymatgen), ``.to_ase()``, scores and validity report."""

    @property
    def structure(self):
        return self.obj

    def to_ase(self):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_atoms(self.obj)

    def __repr__(self) -> str:
        valid = "valid" if self.valid else "invalid"
        return f"CrystalCandidate({self.id}, {self.obj.composition.reduced_formula}, {len(self.obj)} sites, {valid})"


class MoleculeCandidate(Candidate):
    """A generated molecule: ``.mol`` (RDKit ``Mol``), ``.smiles``, scores and validity report."""

    @property
    def mol(self):
        return self.obj

    @property
    def smiles(self) -> str:
        from rdkit import Chem

        return Chem.MolToSmiles(self.obj)

    def __repr__(self) -> str:
        valid = "valid" if self.valid else "invalid"
        return f"MoleculeCandidate({self.id}, {self.smiles}, {valid})"


_CANDIDATE_TYPES = {"crystal": CrystalCandidate, "molecule": MoleculeCandidate}


@dataclass
class GeneratedBatch:
    """Tensors of one generated batch plus per-sample scores (all on CPU) and, when sampled with
    ``decode``, the decoded objects."""

    tensors: Any
    scores: dict[str, torch.Tensor]
    objects: list | None = None


TARGET_MARGIN_SIGMA = 3.0  # how far beyond the training range (in training std) a target may reach


def standardised_target(target: dict[str, float], names: list[str], mean: list[float], std: list[float],
                        low: list[float], high: list[float]) -> list[float]:
    """Standardised condition values ``(value - mean) / std`` of a target (0 for properties it does
    not name). Rejects, naming the value and the fix: a non-dict, an unknown property, a value that
    is not a finite number, and an impossible target: one more than ``TARGET_MARGIN_SIGMA`` training
    standard deviations outside the training range ``[low, high]``, which a generator conditioned
    on the training data cannot reach."""
    if not isinstance(target, dict):
        raise TypeError(f"target must be a dict of property -> value or None, got {type(target).__name__}")
    z = [0.0] * len(names)
    for name, value in target.items():
        if name not in names:
            raise ValueError(f"unknown target property {name!r}; this generator knows {list(names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"target {name}={value!r} must be a finite number")
        j = names.index(name)
        lo, hi = low[j] - TARGET_MARGIN_SIGMA * std[j], high[j] + TARGET_MARGIN_SIGMA * std[j]
        if not lo <= value <= hi:
            raise ValueError(
                f"target {name}={value!r} is far outside the training data ({low[j]:.3g} to {high[j]:.3g}, "
                f"std {std[j]:.3g}); a generator learnt from that data cannot reach it. "
                f"Ask for a value between {lo:.3g} and {hi:.3g}"
            )
        z[j] = (float(value) - mean[j]) / std[j]
    return z


class Generator:
    """A trained VAE-GAN generator with its domain, ready to sample candidates."""

    def __init__(
        self,
        model: VAEGAN,
        domain: Domain,
        config: RunConfig,
        property_names: list[str],
        property_mean: torch.Tensor,
        property_std: torch.Tensor,
        condition_bank: torch.Tensor,
        latent_prior: GaussianPrior,
        device: torch.device,
        source: str = "",
        history: list[dict] | None = None,
        train_info: dict | None = None,
        latent_bank: dict[str, torch.Tensor] | None = None,
    ):
        self.model = model.eval()
        self.domain = domain
        self.config = config
        self.property_names = list(property_names)
        self.property_mean = property_mean.to(device)
        self.property_std = property_std.to(device)
        self.condition_bank = condition_bank.to(device)  # [K, P] standardised training properties
        self.latent_prior = latent_prior.to(device)
        self.device = device
        self.source = source
        self.history = history or []
        self.train_info = train_info or {}  # n_train, device, wall_s of the training run
        self.penalty = domain.build_penalty().to(device)
        # posterior means [N, Z] and standardised properties [N, P] of the training set (newer checkpoints)
        self.latent_bank = {k: v.to(device) for k, v in latent_bank.items()} if latent_bank else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> Generator:
        blob = load_checkpoint(path)
        if not blob["complete"]:
            raise CheckpointError(
                f"checkpoint {path} is from an unfinished training run (epoch {blob['epoch']}); "
                "finish it with `invdes train` (it resumes) or use generator.pt"
            )
        config = checkpoint_config(blob)
        dev = resolve_device(str(device) if device is not None else config.train.device)
        domain = build_domain(config)
        model = build_model(config, domain, blob["state"])
        try:
            model.load_state_dict(blob["model"])
        except RuntimeError as err:
            raise CheckpointError(f"weights in {path} do not fit the model its config describes: {err}") from None
        return cls(
            model.to(dev),
            domain,
            config,
            blob["property_names"],
            torch.tensor(blob["property_mean"]),
            torch.tensor(blob["property_std"]),
            blob["condition_bank"],
            GaussianPrior.from_state(blob["latent_prior"])
            if config.generate.latent_prior != "standard"
            else GaussianPrior.standard(config.model.latent_dim),
            dev,
            source=str(path),
            history=blob.get("history", []),
            train_info=blob.get("train_info", {}),
            latent_bank=blob.get("latent_bank"),
        )

    # ------------------------------------------------------------------ conditioning
    def condition(self, n: int, target: dict[str, float] | None, generator: torch.Generator) -> torch.Tensor:
        """[n, P] standardised condition: the target where given, else property rows of training
        crystals drawn at random (the data distribution the generator was trained on)."""
        pick = torch.randint(len(self.condition_bank), (n,), generator=generator, device=self.device)
        c = self.condition_bank[pick].clone()
        if target is not None:
            std = self._standardised_target(target)
            for name in target:
                j = self.property_names.index(name)
                c[:, j] = std[j]
        return c

    def focused_prior(self, target: dict[str, float], k: int, extra: torch.Tensor | None = None) -> GaussianPrior:
        """Gaussian over the latent means of the ``k`` training samples whose properties lie nearest
        to ``target`` (standardised distance over the named properties), plus the rows of ``extra``
        [M, Z] (e.g. encodings of verified hits); its covariance is shrunk toward the fitted prior's.

        Conditioning through the trunk alone leaves much to ``z``; sampling ``z`` where training
        samples with the wanted property sit makes the target hold far more often."""
        if self.latent_bank is None:
            raise ValueError(
                f"generator {self.source} has no latent bank (trained before prior focusing existed); "
                "set generate.prior_focus: null or retrain it"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"prior focus k={k!r} must be an int >= 2 (training samples near the target)")
        c = self._standardised_target(target)
        y = self.latent_bank["y"]
        cols = [self.property_names.index(name) for name in target]
        dist = (y[:, cols] - c[cols]).pow(2).sum(1)
        nearest = torch.argsort(dist, stable=True)[: min(k, len(dist))]
        mu = self.latent_bank["mu"][nearest]
        if extra is not None and len(extra):
            mu = torch.cat([mu, extra.to(mu)])
        return GaussianPrior.fit_shrunk(mu, self.latent_prior)

    def prior_for(self, target: dict[str, float] | None, focus: int | None, feedback: list | None = None,
                  spread: float | None = None) -> GaussianPrior | MixturePrior:
        """The prior to sample: with ``feedback`` objects and a ``spread``, a mixture of Gaussians
        around their encodings (the fitted prior's shape scaled by ``spread``); else with a target
        and a ``focus``, :meth:`focused_prior` (also covering the feedback's encodings); else the
        fitted prior."""
        if feedback and spread:
            return MixturePrior.around(self.latent_means(feedback), self.latent_prior, spread)
        if not (target and focus):
            return self.base_prior()
        return self.focused_prior(target, focus, self.latent_means(feedback) if feedback else None)

    def base_prior(self) -> GaussianPrior | MixturePrior:
        """The prior of untargeted sampling, ``generate.latent_prior``: N(0, I) or the fitted Gaussian
        (either widened by ``generate.prior_scale``), or the mixture of Gaussians around the training
        samples' encodings (``generate.prior_spread``)."""
        g = self.config.generate
        if g.latent_prior == "standard":
            return GaussianPrior.standard(self.latent_dim, self.device).scaled(g.prior_scale)
        if g.latent_prior == "fitted":
            return self.latent_prior.scaled(g.prior_scale)
        if self.latent_bank is None:
            raise ValueError(
                f"generator {self.source} has no latent bank (trained before it was stored), so "
                "generate.latent_prior: mixture cannot be sampled; use fitted or retrain it"
            )
        return MixturePrior.around(self.latent_bank["mu"], self.latent_prior, g.prior_spread)

    def with_generate(self, **settings: Any) -> Generator:
        """This generator with ``generate`` settings replaced (validated like a config file's), the
        weights shared: e.g. ``with_generate(latent_prior="mixture", prior_spread=0.3)``."""
        data = self.config.model_dump(mode="json")
        data["generate"] = {**data["generate"], **settings}
        config = config_from_dict(data, f"of generator {self.source} with generate settings {settings}")
        other = copy.copy(self)
        other.config = config
        return other

    @torch.no_grad()
    def latent_means(self, objs: list) -> torch.Tensor:
        """[N, Z] posterior means of domain objects (e.g. verified candidates) under the encoder."""
        if not objs:
            return torch.zeros(0, self.latent_dim, device=self.device)
        return self.model.encoder(self.domain.encode(list(objs)).to(self.device))[0]

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    def _standardised_target(self, target: dict[str, float]) -> torch.Tensor:
        """[P] standardised values of the named target properties (others 0); validates them."""
        bank = self.condition_bank * self.property_std + self.property_mean  # training properties
        z = standardised_target(target, self.property_names, self.property_mean.tolist(), self.property_std.tolist(),
                                bank.min(0).values.tolist(), bank.max(0).values.tolist())
        return torch.tensor(z, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        n: int,
        seed: int = 0,
        target: dict[str, float] | None = None,
        temperature: float | None = None,
        batch_size: int | None = None,
        score: bool = True,
        constrained: bool | None = None,
        prior: GaussianPrior | MixturePrior | None = None,
        decode: bool = False,
        workers: int | None = None,
    ) -> GeneratedBatch:
        """Sample ``n`` tensors (one generator call per batch) and, with ``score``, their scores
        (see :meth:`score`); without it ``scores`` is empty, which is faster when only the
        structures are wanted; with ``decode`` also the decoded objects. ``constrained`` overrides
        ``generate.constrained_decoding``.

        Latent samples come from ``prior`` when given; else, with a ``target`` and
        ``generate.prior_focus`` set, from :meth:`focused_prior`; else from the fitted prior.

        Batch ``b`` draws from its own random stream, seeded by ``seed`` and ``b``, so the samples do
        not depend on where the batches are drawn: on CPU with two or more batches, ``workers``
        (default ``generate.sample_workers``) forked processes sample them side by side while this
        one decodes what they return."""
        _check_count(n)
        temperature = self.config.generate.temperature if temperature is None else float(temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        constrained = bool(self.config.generate.constrained_decoding if constrained is None else constrained)
        bs = batch_size or self.config.generate.batch_size
        if prior is None:
            prior = self.prior_for(target, self.config.generate.prior_focus)
        jobs = [(b, start, min(bs, n - start)) for b, start in enumerate(range(0, n, bs))]
        workers = self.sample_workers(n, workers, bs)

        def network(job: tuple[int, int, int]) -> Any:
            gen = torch.Generator(device=self.device).manual_seed(batch_seed(seed, job[0]))
            z = prior.sample(job[2], generator=gen)
            c = self.condition(job[2], target, gen)
            batch = self.model.generator.head.sample(self.model.generator(z, c), tau=1.0, temperature=temperature,
                                                     generator=gen, constrained=constrained)
            return self.domain.batch_to_tensors(batch).to("cpu")

        def ruled(tensors: Any) -> Any:
            return self.domain.decoding_rules(tensors, self.config.generate) if constrained else tensors

        with cyclic_gc_paused():  # decoding keeps tens of thousands of new objects
            if workers > 1:
                def in_worker(job: tuple[int, int, int]) -> tuple[Any, dict[str, torch.Tensor], Any]:
                    with torch.no_grad():  # a worker's grad mode is its own
                        tensors = ruled(network(job))
                        return tensors, self.score(tensors, bs) if score else {}, self.domain.decode_state(tensors)

                parts, scores, objects = [], [], []
                for tensors, part_scores, state in forked_imap(in_worker, jobs, workers,
                                                               max(1, torch.get_num_threads() // workers)):
                    self.domain.keep_decode_state(tensors, state)
                    if decode:  # while the workers sample the next batches
                        objects += self.domain.decode(tensors)
                    parts.append(tensors)
                    scores.append(part_scores)
                tensors = _concat(parts)
                return GeneratedBatch(tensors, {k: torch.cat([s[k] for s in scores]) for k in scores[0]},
                                      objects if decode else None)
            # here: with ``rules_beside_sampling`` the domain's rules on batch i run in a worker thread
            # while the network samples batch i + 1 (torch releases the GIL in its kernels), else in turn;
            # the rules are deterministic, so the result is the same either way
            with ThreadPoolExecutor(max_workers=1) if self.domain.rules_beside_sampling else _InTurn() as rules:
                parts = [rules.submit(ruled, network(job)) for job in jobs]
                parts = [p.result() for p in parts]
            tensors = _concat(parts)
            return GeneratedBatch(tensors, self.score(tensors, bs) if score else {},
                                  self.domain.decode(tensors) if decode else None)

    def sample_workers(self, n: int, workers: int | None = None, batch_size: int | None = None) -> int:
        """Processes :meth:`sample` draws ``n`` samples in (1: this one), given its ``workers``."""
        batches = -(-n // (batch_size or self.config.generate.batch_size))
        if workers is None:
            workers = self.config.generate.sample_workers
        if workers is None:
            workers = usable_cpus() if self.device.type == "cpu" and can_fork() else 1
        elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"sample workers must be an int >= 1 (or null for one per CPU), got {workers!r}")
        workers = min(workers, batches)
        if workers > 1 and self.device.type != "cpu":
            raise ValueError(f"{workers} sample workers fork CPU processes, but the generator runs on {self.device}; "
                             "set generate.sample_workers to 1 or null")
        if workers > 1 and not can_fork():
            raise ValueError(f"{workers} sample workers need processes started by fork (Linux), not available on "
                             f"{sys.platform}; set generate.sample_workers to 1 or null")
        return workers

    @torch.no_grad()
    def score(self, tensors: Any, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """[N] scores of hard tensors: ``realism`` (discriminator, in [0, 1]), ``penalty`` (physics,
        >= 0) and ``pred_<property>`` (discriminator's property heads, physical units); on CPU."""
        bs = batch_size or self.config.generate.batch_size
        scores: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(tensors), bs):
            batch = self.domain.real_batch(tensors.subset(slice(start, start + bs)).to(self.device))
            d = self.model.discriminator(batch)
            props = d.properties * self.property_std + self.property_mean
            part = {"realism": torch.sigmoid(d.realism), "penalty": self.penalty(batch)}
            for j, name in enumerate(self.property_names):
                part[f"pred_{name}"] = props[:, j]
            for k, v in part.items():
                scores.setdefault(k, []).append(v.cpu())
        return {k: torch.cat(v) for k, v in scores.items()}

    @torch.no_grad()
    def negative_elbo(self, tensors: Any, properties: torch.Tensor, seed: int = 0,
                      batch_size: int | None = None) -> dict[str, float]:
        """How well the model explains held-out objects, in nats per object, averaged: ``reconstruction``
        (the decoder's negative log-likelihood of the tensors, teacher-forced from one posterior sample
        and conditioned on the objects' ``properties`` [N, P] in physical units), ``kl`` (the posterior's
        KL to the N(0, I) prior the model was trained against) and their sum ``negative_elbo``, an upper
        bound on -log p(x | y) and the quantity training minimises at ``train.beta_kl: 1``."""
        from design.training.losses import gaussian_kl

        n = len(tensors)
        if n == 0 or properties.shape != (n, len(self.property_names)):
            raise ValueError(f"negative_elbo needs N >= 1 objects and properties [N, {len(self.property_names)}] "
                             f"({self.property_names}); got {n} objects and {tuple(properties.shape)}")
        bs = batch_size or self.config.generate.batch_size
        y = (properties.to(self.device, torch.float32) - self.property_mean) / self.property_std
        rng = torch.Generator(device=self.device).manual_seed(seed)
        rec = kl = 0.0
        for start in range(0, n, bs):
            part = tensors.subset(slice(start, start + bs)).to(self.device)
            mu, logvar = self.model.encoder(part)
            z = mu + torch.randn(mu.shape, generator=rng, device=self.device) * torch.exp(0.5 * logvar)
            raw = self.model.generator(z, y[start : start + bs])
            terms = self.model.generator.head.reconstruction_loss(raw, part)
            rec += float(sum(terms.values())) * len(part)
            kl += float(gaussian_kl(mu, logvar)) * len(part)
        return {"reconstruction": rec / n, "kl": kl / n, "negative_elbo": (rec + kl) / n}

    def candidates(self, batch: GeneratedBatch, id_prefix: str = "g", check: bool = True) -> list[Candidate]:
        cls = _CANDIDATE_TYPES.get(self.domain.name, Candidate)
        objs = batch.objects if batch.objects is not None else self.domain.decode(batch.tensors)
        checks = self.domain.check_many(objs) if check else [None] * len(objs)
        out = []
        for i, (obj, report) in enumerate(zip(objs, checks, strict=True)):
            sc = {k: float(v[i]) for k, v in batch.scores.items()}
            out.append(cls(id=f"{id_prefix}{i:06d}", obj=obj, scores=sc, check=report))
        return out

    def generate(
        self,
        n: int,
        seed: int = 0,
        target: dict[str, float] | None = None,
        valid_only: bool = False,
        temperature: float | None = None,
        max_tries: int = 20,
    ) -> list[Candidate]:
        """``n`` decoded candidates, each checked; with ``valid_only`` keep sampling until ``n`` pass.

        Candidate ids are ``s<seed>-<index>`` so files from different seeds never collide.
        """
        _check_count(n)
        if not valid_only:
            return self.candidates(self.sample(n, seed, target, temperature, decode=True), id_prefix=f"s{seed}-")
        found: list[Candidate] = []
        drawn = 0
        for attempt in range(max_tries):
            want = max(2 * (n - len(found)), 16)
            cands = self.candidates(self.sample(want, seed + attempt * 1_000_003, target, temperature, decode=True),
                                    f"s{seed}-")
            for c in cands:
                if c.valid:
                    c.id = f"s{seed}-{len(found):06d}"
                    found.append(c)
                    if len(found) == n:
                        return found
            drawn += want
        raise RuntimeError(
            f"only {len(found)} of {n} valid candidates in {drawn} samples; lower n, raise max_tries, "
            "or retrain the generator"
        )


def _check_count(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
    if n <= 0:
        raise ValueError(f"n must be a positive number of samples, got {n}")


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s random stream in a call seeded ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed) % 2**64, batch]).generate_state(1)[0])


class _InTurn:
    """An executor that runs each job when it is submitted (the in-turn twin of a one-thread pool)."""

    def __enter__(self) -> _InTurn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Future:
        done: Future = Future()
        done.set_result(fn(*args))
        return done


def _concat(parts: list) -> Any:
    """Row-wise concatenation of tensor containers; non-tensor fields (a vocabulary) come from the first."""
    first = parts[0]
    if len(parts) == 1:
        return first
    fields = {k: torch.cat([getattr(p, k) for p in parts]) if torch.is_tensor(v) else v for k, v in vars(first).items()}
    return type(first)(**fields)


def load_generator(uri: str | Path, device: str | torch.device | None = None,
                   generate: dict[str, Any] | None = None) -> Generator:
    """Load a generator from a checkpoint path or an MLflow model URI (``models:/name@alias``, ``runs:/...``);
    ``generate`` replaces sampling settings of its config (see :meth:`Generator.with_generate`)."""
    uri_s = str(uri)
    if uri_s.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        from design.tracking.store import download_generator_checkpoint

        gen = Generator.from_checkpoint(download_generator_checkpoint(uri_s), device)
    else:
        path = Path(uri_s)
        gen = Generator.from_checkpoint(path / "generator.pt" if path.is_dir() else path, device)
    return gen.with_generate(**generate) if generate else gen
