"""The domain interface: the only place that knows chemistry.

A domain turns samples (crystal structures, molecules) into tensors and back, scores physical
violations differentiably (``penalty``) and exactly (``check``), identifies duplicates
(``fingerprint`` buckets + ``equivalent``), writes files, and supplies the domain-specific network
parts that the domain-agnostic VAE-GAN composes. Trainer, sampler, filter and ranker only talk to
this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from design.config import GenerateConfig


@dataclass
class EncodedDataset:
    """Tensors of a dataset split plus its property labels.

    ``tensors`` is the domain's hard tensor form (supports ``len``, ``subset``, ``to``);
    ``y`` is [N, P] float32 in physical units, column order ``property_names``.
    """

    tensors: Any
    y: torch.Tensor
    ids: list[str]
    property_names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: torch.Tensor) -> EncodedDataset:
        idx_list = idx.tolist()
        return EncodedDataset(
            self.tensors.subset(idx), self.y[idx], [self.ids[i] for i in idx_list], self.property_names, self.skipped
        )


@dataclass
class DomainNetworks:
    """Domain-specific network parts.

    * ``encoder_body``: real batch -> [B, H] features.
    * ``decoder_head``: [B, H] trunk output -> raw outputs (dict of tensors); it also provides
      ``sample(raw, tau, temperature, generator, constrained)`` -> soft batch and
      ``reconstruction_loss(raw, tensors)``; a head may also provide
      ``reconstruct(raw, tensors, tau) -> (losses, soft reconstruction)`` when it gets both from one
      pass (an autoregressive decoder's teacher-forced logits), which the trainer then prefers.
    * ``disc_body``: soft batch -> [B, F] features (invariant to the symmetries of the domain's objects).
    """

    encoder_body: nn.Module
    decoder_head: nn.Module
    disc_body: nn.Module
    feature_dim: int


@dataclass(frozen=True)
class CheckReport:
    """An exact check's verdict: ``structural`` and ``compositional`` stages (see
    :meth:`Domain.check`) and ``reasons`` naming every failed test."""

    structural: bool
    compositional: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def valid(self) -> bool:
        return self.structural and self.compositional


@dataclass
class Candidate:
    """A generated object plus what the pipeline computed about it."""

    id: str
    obj: Any
    scores: dict[str, float] = field(default_factory=dict)
    check: Any = None

    @property
    def valid(self) -> bool:
        return bool(self.check is not None and self.check.valid)


class Domain(ABC):
    """Interface every domain implements (see module docstring)."""

    name: str
    # whether ``decoding_rules`` on sampled batch i runs in a worker thread while the network samples
    # batch i + 1 (a win when the rules are Python the sampler's torch kernels can run beside; a loss
    # when the rules are tensor work that competes with the sampler's threads for the cores)
    rules_beside_sampling: bool = True
    # whether the domain's networks train under bf16 autocast (``train.precision``); a domain whose
    # networks mix dtypes there (the crystal edge features' index_put) keeps float32
    trains_in_bf16: bool = False

    # -- data
    @abstractmethod
    def load_dataset(
        self, relpath: str, properties: list[str], limit: int | None = None, property_table: str | None = None
    ) -> EncodedDataset:
        """Rows of a dataset file with their ``properties``; ``property_table`` (a CSV keyed by the
        dataset's id column) supplies properties the file lacks."""

    @abstractmethod
    def fit_state(self, train: EncodedDataset) -> dict:
        """Statistics of the training data the networks need (scalers, allowed vocabulary); saved with weights."""

    def reference_objects(self, data: EncodedDataset) -> list:
        """The objects of a dataset for novelty tests: anything :meth:`fingerprint` and
        :meth:`equivalent` accept. Default: the decoded tensors."""
        return self.decode(data.tensors)

    # -- tensors
    @abstractmethod
    def encode(self, samples: list) -> Any: ...

    @abstractmethod
    def decode(self, tensors: Any) -> list: ...

    @abstractmethod
    def real_batch(self, tensors: Any) -> Any:
        """Hard tensors -> the soft batch form the discriminator and penalty take."""

    @abstractmethod
    def interpolate(self, real: Any, fake: Any, alpha: torch.Tensor) -> Any:
        """Per-sample convex mix of two soft batches (for gradient penalties); alpha is [B]."""

    @abstractmethod
    def batch_to_tensors(self, batch: Any) -> Any:
        """Soft batch -> hard tensors."""

    @abstractmethod
    def detach_species(self, batch: Any) -> Any:
        """The batch with its discrete choices (elements, atom types) cut from the autograd graph."""

    def decoding_rules(self, tensors: Any, settings: GenerateConfig | None = None) -> Any:
        """Sampled hard tensors after the domain's inference-time rules that act on whole samples
        (``generate.constrained_decoding``; rules inside the decoder head come with its ``sample``),
        parametrised by the generator's current ``generate`` section (None: its defaults). Identity by
        default."""
        return tensors

    def decode_state(self, tensors: Any) -> Any:
        """What decoding sampled ``tensors`` needs that sampling them already worked out, for a sampler
        in another process to hand on (picklable); None (the default): nothing."""
        return None

    def keep_decode_state(self, tensors: Any, state: Any) -> None:
        """Take :meth:`decode_state` of ``tensors`` from another process, for :meth:`decode` to use
        (nothing to take by default)."""
        return None

    def detach_cell(self, batch: Any) -> Any:
        """The batch with its periodic cell cut from the autograd graph (identity for domains
        without one)."""
        return batch

    def augment(self, batch: Any, jitter: float, permute: bool, generator: torch.Generator | None = None) -> Any:
        """Differentiable augmentation of a discriminator input: random displacements of standard
        deviation ``jitter`` (the domain's length unit) and a random order of its parts. Domains
        that support neither keep this default, which refuses a request it cannot honour."""
        if jitter > 0 or permute:
            raise ValueError(
                f"domain {self.name!r} has no discriminator augmentation; set train.d_augment_jitter: 0 "
                "and train.d_augment_permute: false"
            )
        return batch

    def training_tensors(self, tensors: Any, model: nn.Module) -> Any:
        """The training set's tensors with what ``model`` reads of every sample in every epoch worked
        out once (molecules: the decoder's teacher-forced derivation features). Identity by default."""
        return tensors

    # -- physics and checks
    @abstractmethod
    def build_penalty(self) -> nn.Module:
        """Module mapping a soft batch to a [B] differentiable penalty (and ``.terms`` for its parts)."""

    @abstractmethod
    def check(self, obj: Any) -> Any:
        """Exact validity report with ``.valid``, ``.reasons`` and two stages: ``.structural`` (the
        object is well formed: crystals, atoms apart and a real cell; molecules, RDKit sanitises one
        connected molecule) and ``.compositional`` (its chemistry is acceptable: crystals, SMACT
        charge neutrality and electronegativity; molecules, the MOSES-style filters)."""

    def check_many(self, objs: list) -> list:
        """:meth:`check` of each object (domains may decide many at once faster); many objects are
        checked in forked processes (``parallel.map_forked``)."""
        from design.parallel import map_forked

        return map_forked(self.check, objs)

    @abstractmethod
    def fast_valid(self, tensors: Any) -> torch.Tensor:
        """[B] bool, a cheap tensor-level validity estimate for training monitors."""

    @abstractmethod
    def fingerprint(self, obj: Any) -> str:
        """Bucket key: objects in different buckets are never equivalent."""

    @abstractmethod
    def equivalent(self, a: Any, b: Any) -> bool: ...

    def contains(self, obj: Any, part: str) -> bool:
        """Whether ``obj`` has ``part`` (crystals: an element symbol) for ``filter.require_contains``.
        Domains without such a notion keep this default, which refuses the request."""
        raise ValueError(f"domain {self.name!r} cannot test for parts; leave filter.require_contains empty")

    @abstractmethod
    def monitor_keys(self, tensors: Any) -> list[str]:
        """Cheap per-sample identity strings for the per-epoch uniqueness monitor."""

    # -- networks
    @abstractmethod
    def build_networks(self, model_cfg: Any, state: dict) -> DomainNetworks: ...

    # -- output
    @abstractmethod
    def describe(self, obj: Any) -> dict[str, Any]:
        """Columns for the candidates table (formula, sizes, ...)."""

    def describe_many(self, objs: list) -> list[dict[str, Any]]:
        """:meth:`describe` of each object; many in forked processes (``parallel.map_forked``: the
        molecule domain's QED and SA scores take milliseconds a molecule)."""
        from design.parallel import map_forked

        return map_forked(self.describe, objs)

    @abstractmethod
    def write(self, candidates: list[Candidate], directory: Path) -> list[Path]:
        """Write one structure file per candidate, named by candidate id; return the paths."""

    def picture(self, candidates: list[Candidate], path: Path) -> Path | None:
        """A picture (PNG) of the candidates at ``path``, or ``None`` where the domain draws none."""
        return None

    @abstractmethod
    def serialize(self, obj: Any) -> str:
        """Text form stored in candidate tables (CIF, SMILES)."""

    @abstractmethod
    def deserialize(self, text: str) -> Any: ...
