"""The molecule domain: RDKit ``Mol`` <-> SELFIES token tensors, chemistry penalty, checks, files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from rdkit import Chem

from design.config import GenerateConfig, ModelConfig, MoleculeConfig
from design.domains.base import Candidate, Domain, DomainNetworks, EncodedDataset
from design.domains.molecule import chemistry
from design.domains.molecule.assemble import MolAssembler
from design.domains.molecule.grammar import SelfiesGrammar
from design.domains.molecule.nets import (
    TokenDecoderHead,
    TokenDiscBody,
    TokenEncoderBody,
    TokenTransformerHead,
)
from design.domains.molecule.penalty import MoleculePenalty, token_tables
from design.domains.molecule.tokens import (
    EncodeError,
    MoleculeBatch,
    MoleculeTensors,
    indices_to_selfies,
    selfies_to_indices,
    selfies_to_smiles,
    smiles_to_selfies,
)
from design.utils import atomic_write_text

log = logging.getLogger(__name__)

SANITIZED = "invdes_sanitized"  # int property on decoded molecules: 1 if RDKit sanitised them


class MoleculeDomain(Domain):
    """Molecules as SELFIES token sequences; candidate objects are RDKit ``Mol``.

    The vocabulary comes from the training corpus: :meth:`fit_state` records it and
    :meth:`build_networks` (called whenever a model is built or loaded) sets it on the domain,
    which then encodes and decodes with it.
    """

    name = "molecule"
    # the ring rule's screen is a tensor derivation of the batch: beside the sampler it competed with the
    # sampler's torch threads (30,000 samples, 2 threads, batch 4,096: 18.6 s to sample with the rule in
    # a worker thread, 16.0 s in turn)
    rules_beside_sampling = False
    trains_in_bf16 = True  # train.precision bf16: 0.34 vs 0.53 s a default step, the same likelihood

    def __init__(self, settings: MoleculeConfig | None = None, seed: int = 0):
        self.settings = settings or MoleculeConfig()
        self.seed = seed
        self.vocab: tuple[str, ...] | None = None
        self._assembled: MolAssembler | None = None

    # -- data
    def load_dataset(
        self, relpath: str, properties: list[str], limit: int | None = None, property_table: str | None = None
    ) -> EncodedDataset:
        from design.data.molecules import load_molecule_dataset

        if property_table is not None:
            raise ValueError(
                f"data.property_table={property_table!r}: the molecule domain reads properties from its corpus "
                "file only; put the columns there and set data.property_table: null"
            )
        return load_molecule_dataset(relpath, list(properties), self.settings.max_tokens, limit,
                                     self.settings.subsample, self.seed, self.settings.root)

    def fit_state(self, train: EncodedDataset) -> dict:
        self.vocab = tuple(train.tensors.vocab)
        return {"vocab": list(self.vocab), "max_tokens": self.settings.max_tokens}

    def reference_objects(self, data: EncodedDataset) -> list[str]:
        """Canonical SMILES of a dataset (its ids): identity needs nothing else, and decoding
        hundreds of thousands of molecules would cost minutes."""
        return list(data.ids)

    # -- tensors
    def _vocab(self) -> tuple[str, ...]:
        if self.vocab is None:
            raise RuntimeError("the molecule domain has no vocabulary yet: build or load a model first")
        return self.vocab

    def encode(self, samples: list) -> MoleculeTensors:
        """RDKit molecules or SMILES -> tensors with the domain's vocabulary; raises EncodeError."""
        vocab = self._vocab()
        index = {t: i for i, t in enumerate(vocab)}
        rows = []
        for s in samples:
            smiles = s if isinstance(s, str) else Chem.MolToSmiles(s)
            rows.append(selfies_to_indices(smiles_to_selfies(smiles, self.settings.root), index,
                                           self.settings.max_tokens))
        return MoleculeTensors(torch.tensor(rows, dtype=torch.long).view(len(rows), -1), vocab)

    def decode(self, t: MoleculeTensors) -> list[Chem.Mol]:
        """RDKit molecules assembled from the SELFIES derivation of the rows (``assemble.py``; the
        molecules the SELFIES decoder's SMILES give, without writing and parsing SMILES), marked
        with whether they sanitised; through SMILES for a vocabulary that is not assembled."""
        assembler = self._assembler(t.vocab)
        if not assembler.supported:
            return [self.mol_from_smiles(s) for s in self.smiles(t)]
        out = []
        for mol, ok in assembler.molecules(t.tokens):
            mol.SetIntProp(SANITIZED, int(ok))
            out.append(mol)
        return out

    def _assembler(self, vocab: tuple[str, ...]) -> MolAssembler:
        if self._assembled is None or self._assembled.vocab != vocab:
            self._assembled = MolAssembler(vocab)
        return self._assembled

    @staticmethod
    def smiles(t: MoleculeTensors) -> list[str]:
        """SMILES as the SELFIES decoder writes them, one per row."""
        return [selfies_to_smiles(indices_to_selfies(row, t.vocab)) for row in t.tokens.tolist()]

    @staticmethod
    def mol_from_smiles(smiles: str) -> Chem.Mol:
        """A sanitised molecule, or (marked unsanitised) the raw parse / an empty molecule."""
        mol = chemistry.mol_from_smiles(smiles)
        ok = mol is not None
        if mol is None:
            mol = (Chem.MolFromSmiles(smiles, sanitize=False) if smiles else None) or Chem.Mol()
        mol.SetIntProp(SANITIZED, int(ok))
        return mol

    def real_batch(self, t: MoleculeTensors) -> MoleculeBatch:
        return t.to_batch(len(t.vocab))

    def interpolate(self, real: MoleculeBatch, fake: MoleculeBatch, alpha: torch.Tensor) -> MoleculeBatch:
        a = alpha.view(-1, 1, 1)
        return MoleculeBatch(a * real.tokens + (1 - a) * fake.tokens)

    def batch_to_tensors(self, batch: MoleculeBatch) -> MoleculeTensors:
        """Hard tensors of a batch; a sampler's graphs of its rows are kept for :meth:`decode`."""
        t = batch.to_tensors(self._vocab())
        if batch.graph is not None:
            assembler = self._assembler(t.vocab)
            if assembler.supported:
                assembler.remember(t.tokens, batch.graph)
        return t

    def decode_state(self, t: MoleculeTensors) -> list | None:
        """The rows' graphs (``assemble.Written``), kept from sampling and the ring rule."""
        assembler = self._assembler(t.vocab)
        return assembler.written(t.tokens) if assembler.supported else None

    def keep_decode_state(self, t: MoleculeTensors, state: list | None) -> None:
        if state is not None:
            self._assembler(t.vocab).keep(t.tokens, state)

    def decoding_rules(self, t: MoleculeTensors, settings: GenerateConfig | None = None) -> MoleculeTensors:
        """Open rings of 8 or more atoms that far-reaching ring tokens wrote (``decoding.py``)."""
        from design.domains.molecule.decoding import open_large_rings

        return open_large_rings(t, self._assembler(t.vocab))[0]

    def detach_species(self, batch: MoleculeBatch) -> MoleculeBatch:
        return MoleculeBatch(batch.tokens.detach())

    # -- chemistry
    def build_penalty(self) -> MoleculePenalty:
        s = self.settings
        return MoleculePenalty(self._vocab(), s.valence_weight, s.small_ring_weight, s.unwanted_weight)

    def check(self, obj: Chem.Mol) -> chemistry.MoleculeCheck:
        if obj.HasProp(SANITIZED) and not obj.GetIntProp(SANITIZED):
            return chemistry.check_mol(None)
        return chemistry.check_mol(obj)

    def fast_valid(self, t: MoleculeTensors) -> torch.Tensor:
        """Non-empty and ended before ``max_tokens`` (SELFIES makes every such sequence a molecule)."""
        n = t.lengths()
        return (n > 0) & (n < t.tokens.shape[1] - 1)

    def fingerprint(self, obj: Chem.Mol | str) -> str:
        """Canonical SMILES (a string is taken as one already): the identity of a molecule."""
        return obj if isinstance(obj, str) else Chem.MolToSmiles(obj)

    def equivalent(self, a: Any, b: Any) -> bool:
        return True  # same canonical SMILES (same bucket) is the same molecule

    def training_tensors(self, t: MoleculeTensors, model: torch.nn.Module) -> MoleculeTensors:
        """With the decoder's teacher-forced derivation features (``model.grammar_features``), derived
        once instead of in every batch of every epoch."""
        return model.generator.head.with_teacher_features(t)

    def monitor_keys(self, t: MoleculeTensors) -> list[str]:
        return [",".join(map(str, row)) for row in t.tokens.cpu().tolist()]

    # -- networks
    def build_networks(self, model_cfg: ModelConfig, state: dict) -> DomainNetworks:
        self.vocab = tuple(state["vocab"])
        if state["max_tokens"] != self.settings.max_tokens:
            raise ValueError(f"the model was trained with max_tokens={state['max_tokens']}, the config says "
                             f"molecule.max_tokens={self.settings.max_tokens}; use the trained value")
        v, n_pos = len(self.vocab), self.settings.max_tokens + 1
        head = _HEADS[model_cfg.decoder](model_cfg, v, self.settings.max_tokens,
                                         token_tables(self.vocab)["is_atom"].bool(), SelfiesGrammar(self.vocab))
        return DomainNetworks(
            encoder_body=TokenEncoderBody(model_cfg, v, n_pos),
            decoder_head=head,
            disc_body=TokenDiscBody(model_cfg, v, n_pos, model_cfg.hidden),
            feature_dim=model_cfg.hidden,
        )

    # -- output
    def describe(self, obj: Chem.Mol) -> dict[str, Any]:
        ok = obj.GetNumAtoms() > 0 and (not obj.HasProp(SANITIZED) or obj.GetIntProp(SANITIZED))
        nan = float("nan")
        return {
            "smiles": Chem.MolToSmiles(obj) if obj.GetNumAtoms() else "",
            "n_heavy_atoms": obj.GetNumHeavyAtoms(),
            "mol_weight": round(chemistry.descriptor("mol_weight", obj), 3) if ok else nan,
            "logp": round(chemistry.descriptor("logp", obj), 3) if ok else nan,
            "qed": round(chemistry.descriptor("qed", obj), 4) if ok else nan,
            "sa": round(chemistry.descriptor("sa", obj), 4) if ok else nan,
        }

    def serialize(self, obj: Chem.Mol) -> str:
        return Chem.MolToSmiles(obj)

    def deserialize(self, text: str) -> Chem.Mol:
        if not isinstance(text, str):
            raise ValueError(f"a molecule's text must be a SMILES string, got {text!r}")
        return self.mol_from_smiles(text)

    def write(self, candidates: list[Candidate], directory: Path) -> list[Path]:
        """One ``<id>.sdf`` per candidate (2-D coordinates, scores as SD properties) and all of them
        in ``molecules.smi`` (SMILES and id per line)."""
        from rdkit.Chem import rdDepictor

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths, lines = [], []
        for c in candidates:
            mol = Chem.Mol(c.obj)
            mol.SetProp("_Name", c.id)
            for k, v in c.scores.items():
                mol.SetProp(k, f"{v:.6g}")
            rdDepictor.Compute2DCoords(mol)
            path = directory / f"{c.id}.sdf"
            atomic_write_text(path, Chem.MolToMolBlock(mol) + _sd_props(mol) + "$$$$\n")
            paths.append(path)
            lines.append(f"{self.serialize(c.obj)} {c.id}")
        atomic_write_text(directory / "molecules.smi", "".join(line + "\n" for line in lines))
        return paths

    def picture(self, candidates: list[Candidate], path: Path) -> Path | None:
        """A PNG grid of the candidates' 2-D drawings, captioned by id (at most 5 per row)."""
        from rdkit.Chem import Draw

        if not candidates:
            return None
        img = Draw.MolsToGridImage([c.obj for c in candidates], molsPerRow=min(5, len(candidates)),
                                   subImgSize=(260, 220), legends=[c.id for c in candidates])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(str(path))
        return path


_HEADS = {"gru": TokenDecoderHead, "transformer": TokenTransformerHead}


def _sd_props(mol: Chem.Mol) -> str:
    return "".join(f">  <{k}>\n{mol.GetProp(k)}\n\n" for k in mol.GetPropNames() if not k.startswith("_") and k != SANITIZED)


__all__ = ["EncodeError", "MoleculeDomain"]
