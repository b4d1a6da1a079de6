"""Run configuration: YAML files validated at the boundary, unknown keys rejected, then frozen.

A run config has one section per pipeline stage. Every section is a frozen pydantic model with
``extra="forbid"``, so a misspelt key is an error that names the key, not a silently ignored value.

The part of the config that decides the trained generator (``domain``, ``seed``, ``data``,
``model``, ``train``) is hashed by :func:`generator_key`; ``discover`` reuses a cached generator
when that key matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the value and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Which dataset files to train on and judge novelty against (paths relative to the data root)."""

    train: str = "crystals/mp_20_biternary/val.csv.gz"
    reference: str = "crystals/mp_20_biternary/test.csv.gz"
    properties: tuple[str, ...] = ("formation_energy_per_atom",)
    max_sites: int = Field(20, ge=1, le=64)
    limit: int | None = Field(None, ge=1, description="use only the first N rows (quick runs)")
    property_table: str | None = Field(
        None, description="CSV keyed by material_id with property columns the train file lacks (e.g. oracle "
        "labels); a path relative to the working directory. Rows without a finite value are skipped",
    )

    @field_validator("properties")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) == 0:
            raise ValueError("data.properties is empty: name at least one property column, e.g. [band_gap]")
        if len(set(v)) != len(v):
            raise ValueError(f"data.properties has duplicates: {list(v)}")
        return v


class ModelConfig(_Section):
    """Sizes of the VAE-GAN networks. The generic sizes serve every domain (crystals: sites;
    molecules: tokens); ``max_elements``, ``heads``, ``disc_cutoff`` and ``rbf`` are crystal-only."""

    latent_dim: int = Field(64, ge=2)
    max_elements: int = Field(4, ge=1, le=20, description="crystals: palette size, most distinct elements per crystal")
    hidden: int = Field(256, ge=8, description="width of the latent/condition trunk (molecules: also the GRU width)")
    site_dim: int = Field(128, ge=8, description="width of per-site (crystal) or per-token embedding (molecule) features")
    heads: int = Field(4, ge=1, description="attention heads (crystals; molecules with the transformer decoder)")
    encoder_layers: int = Field(2, ge=1, description="transformer (crystal) or GRU (molecule) layers of the encoder")
    decoder_layers: int = Field(2, ge=1, description="transformer (crystal) or GRU (molecule) layers of the decoder")
    decoder: Literal["gru", "transformer"] = Field(
        "gru",
        description="molecules: the token decoder, an autoregressive GRU of width hidden or a causal transformer "
        "of width site_dim",
    )
    grammar_features: bool = Field(
        False,
        description="molecules: feed the decoder, at every step, the SELFIES derivation of the tokens so far "
        "(ring size each ring index would close, valence state, open branch budget)",
    )
    grammar_valence: bool = Field(
        False,
        description="molecules, with grammar_features: also, per ring index, the free valence of the atom it "
        "would close the ring to and whether that atom (and the current one) has a double or triple bond",
    )
    disc_dim: int = Field(64, ge=8, description="width of the discriminator's per-site / per-token features")
    disc_layers: int = Field(3, ge=1, description="graph-network (crystal) or convolution (molecule) layers of D")
    disc_cutoff: float = Field(6.0, gt=0, description="crystals: radial cutoff of the discriminator, Angstrom")
    rbf: int = Field(12, ge=2, description="crystals: radial basis functions per distance")
    spectral_norm: bool = True
    site_count: bool = Field(
        False,
        description="crystals: a categorical head draws the number of sites N, then each of the first N "
        "slots a palette entry (off: each slot draws empty or an entry on its own)",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.site_dim % self.heads:
            raise ValueError(
                f"model.site_dim={self.site_dim} is not divisible by model.heads={self.heads}; "
                "pick a site_dim that is a multiple of heads"
            )
        if self.grammar_valence and not self.grammar_features:
            raise ValueError("model.grammar_valence=true extends the grammar features; set model.grammar_features: "
                             "true as well, or grammar_valence: false")
        return self


GanLoss = Literal["minimax", "non_saturating", "hinge", "relativistic", "wgan_gp"]


class TrainConfig(_Section):
    """Optimisation and loss weights of the VAE-GAN."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2)
    lr_g: float = Field(1e-3, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: both learning rates follow a cosine over all steps down to lr_final x base"
    )
    lr_final: float = Field(0.05, ge=0, le=1, description="last learning rate of the cosine, as a fraction of the base")
    beta_kl: float = Field(0.1, ge=0, description="KL weight; reconstruction and KL are both per-crystal sums")
    kl_warmup_epochs: int = Field(5, ge=0)
    gan_loss: GanLoss = "non_saturating"
    adv_weight: float = Field(0.5, ge=0, description="0 trains a plain VAE (no adversarial term)")
    adv_start_epoch: int = Field(0, ge=0, description="epochs of pure VAE training before the GAN game starts")
    realism_critic: bool = Field(
        False, description="with adv_weight 0: D's realism head still learns real vs generated (from "
        "adv_start_epoch), so rankings and scores get a trained critic, while G gets no adversarial gradient",
    )
    critic_epochs: int | None = Field(
        None, ge=1, description="with adv_weight 0 and realism_critic: the critic learns in this many epochs after "
        "the generator's last, against the final generator (which is frozen then), its learning rate on a cosine "
        "of its own; it sends G no gradient, so G's epochs need not pay for its samples. Default: alongside G "
        "from adv_start_epoch",
    )
    d_after_generator: bool = Field(
        False, description="with critic_epochs: the discriminator, its property heads included, learns only in "
        "the critic's epochs (none of its steps in the generator's, about 12% of their CPU time in the molecule "
        "default); its property heads then learn from a fresh learning-rate cosine over those epochs only",
    )
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="the training steps' forward passes: fp32, or autocast to bfloat16 (weights, their "
        "gradients, optimiser state and the loss stay float32; molecules only, crystals refuse bf16); auto: bf16 "
        "where the domain supports it and the device computes it natively (a CPU with AMX or AVX512-BF16, a "
        "CUDA GPU with bf16), else fp32. Sampling always runs in float32",
    )
    adv_prior: Literal["standard", "fitted"] = Field(
        "fitted", description="latent samples of the adversarial game: N(0, I) or last epoch's fitted prior"
    )
    d_species_grad: bool = Field(
        False, description="let D's gradients reach the generator's element choices (straight-through)"
    )
    d_cell_grad: bool = Field(
        True, description="let D's gradients (adversarial, feature matching, conditioning) reach the cell "
        "(crystals: the lattice); false leaves the cell to the likelihood",
    )
    fm_weight: float = Field(0.1, ge=0, description="feature-matching reconstruction on D's features")
    fm_relative: bool = Field(
        False, description="divide the feature-matching distance by the real features' mean square, so a "
        "discriminator whose features grow cannot make it dominate the loss",
    )
    prop_weight: float = Field(1.0, ge=0, description="D's property head regression on real data")
    cond_weight: float = Field(0.02, ge=0, description="AC reward: G's samples should read as their condition c")
    penalty_weight: float = Field(10.0, ge=0, description="physics penalty on generated samples")
    penalty_prior: bool = Field(
        True, description="the penalty scores adv_samples prior samples G(z, c) as well as the soft reconstruction; "
        "false: the reconstruction only, and a step with no adversarial or conditioning term decodes no prior samples",
    )
    gp_weight: float = Field(10.0, ge=0, description="gradient penalty weight (wgan_gp)")
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="one-sided: real targets are 1 - this")
    n_critic: int = Field(1, ge=1, description="discriminator steps per generator step")
    d_augment_jitter: float = Field(
        0.0, ge=0, description="differentiable augmentation: random displacements (Angstrom for crystals) of every "
        "input D sees in the adversarial game, real and generated alike; 0 = off",
    )
    d_augment_permute: bool = Field(
        False, description="random site order of D's adversarial inputs (an identity for the order-invariant crystal D)"
    )
    adv_samples: int | None = Field(
        None, ge=2, description="generated samples per step for the adversarial game, conditioning and penalty "
        "(default: the batch size); fewer make a step cheaper where sampling costs much (autoregressive decoders)",
    )
    gumbel_tau: float = Field(1.0, gt=0)
    grad_clip: float = Field(5.0, gt=0)
    monitor_samples: int = Field(256, ge=8, description="fixed sample for per-epoch collapse monitors")
    collapse_uniqueness: float = Field(
        0.5, ge=0, le=1, description="warn (metric collapse_warning=1) when the monitor sample's uniqueness falls below"
    )
    max_faults: int = Field(
        5, ge=0, description="non-finite losses or gradients tolerated; each restores the epoch's start state"
    )
    fault_lr_factor: float = Field(0.5, gt=0, le=1, description="learning rates are multiplied by this after a fault")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores")

    @model_validator(mode="after")
    def _critic_after_training(self) -> TrainConfig:
        if self.critic_epochs is not None and (self.adv_weight > 0 or not self.realism_critic):
            raise ValueError(
                f"train.critic_epochs={self.critic_epochs} trains a realism critic after the generator, which needs "
                f"train.realism_critic: true and train.adv_weight: 0 (got {self.realism_critic}, {self.adv_weight}); "
                "remove critic_epochs or set those"
            )
        if self.d_after_generator and self.critic_epochs is None:
            raise ValueError(
                "train.d_after_generator: true trains the discriminator only in the critic's epochs after the "
                "generator's, and train.critic_epochs is not set; set critic_epochs (e.g. 2) or remove d_after_generator"
            )
        return self

    @model_validator(mode="after")
    def _gradient_penalty_pairs(self) -> TrainConfig:
        if self.gan_loss == "wgan_gp" and self.adv_samples is not None and self.adv_samples < self.batch_size:
            raise ValueError(
                f"train.adv_samples={self.adv_samples} < train.batch_size={self.batch_size} cannot pair real and "
                "generated samples for the wgan_gp gradient penalty; remove adv_samples or pick another gan_loss"
            )
        return self


class PenaltyConfig(_Section):
    """Crystal physics penalty: thresholds in physical units (molecules: see ``MoleculeConfig``)."""

    distance_scale: float = Field(0.6, gt=0, le=1.5, description="atoms closer than scale*(r_cov_i+r_cov_j) are penalised")
    density_min: float = Field(0.5, gt=0, description="g/cm^3")
    density_max: float = Field(25.0, gt=0, description="g/cm^3")
    distance_weight: float = Field(1.0, ge=0)
    charge_weight: float = Field(1.0, ge=0)
    density_weight: float = Field(0.1, ge=0)
    distance_moves_cell: bool = Field(
        True,
        description="let the distance term's gradient reach the lattice; false makes the generator "
        "resolve clashes by moving atoms, not by inflating the cell",
    )

    @model_validator(mode="after")
    def _range(self) -> PenaltyConfig:
        if self.density_min >= self.density_max:
            raise ValueError(
                f"penalty.density_min={self.density_min} >= penalty.density_max={self.density_max}; "
                "the lower bound must be below the upper"
            )
        return self


class MoleculeConfig(_Section):
    """Molecule-domain settings: SELFIES length, training-subset choice, chemistry-penalty weights."""

    max_tokens: int = Field(72, ge=4, le=512, description="longest SELFIES (tokens); longer molecules are skipped")
    subsample: Literal["random", "first"] = Field(
        "random", description="how data.limit picks rows: a seeded random subset (MOSES train is ordered) or the first N"
    )
    valence_weight: float = Field(1.0, ge=0, description="expected bond-order excess between adjacent atom tokens")
    small_ring_weight: float = Field(1.0, ge=0, description="expected ring closures making 3- or 4-membered rings")
    unwanted_weight: float = Field(1.0, ge=0, description="expected tokens of charged or disallowed atoms")
    root: Literal["canonical", "no_terminal_multiple"] = Field(
        "canonical",
        description="the atom a molecule's SELFIES starts at: RDKit's canonical root, or the first atom in canonical "
        "order that is not a terminal atom bound by a double or triple bond (not the O of O=C...)",
    )


class GenerateConfig(_Section):
    """Discovery rounds: how many samples, and the property target of the conditional generator."""

    rounds: int = Field(3, ge=1)
    n_per_round: int = Field(1000, ge=1)
    batch_size: int = Field(1024, ge=1)
    temperature: float = Field(1.0, gt=0, description="softmax temperature of element sampling")
    constrained_decoding: bool = Field(
        True,
        description="inference-time decoding rules of the domain (crystals: of two sites closer than 0.5 A "
        "drop the less confident, pick the most probable charge-balanced elements, scale the cell to the "
        "composition's fitted volume; molecules: open rings of 8 or more atoms that far-reaching SELFIES ring tokens wrote); "
        "false gives the raw samples",
    )
    relax_steps: int = Field(
        0, ge=0, description="crystals, with constrained decoding: Adam steps of the soft-sphere relaxation of "
        "each sample's coordinates and cell shape at fixed volume (design/domains/crystal/relax.py); 0 = off",
    )
    relax_scale: float = Field(
        1.2, gt=0, description="crystals: atoms closer than this times the sum of their covalent radii repel"
    )
    relax_lr: float = Field(
        0.003, gt=0, description="crystals: relaxation step size (fractional units for coordinates, Angstrom for the cell)"
    )
    latent_prior: Literal["fitted", "standard", "mixture"] = Field(
        "fitted", description="sample z from a Gaussian fitted to the encoded training set, from N(0, I), or from "
        "a mixture of Gaussians around every training sample's encoding, each the fitted prior's shape scaled by "
        "generate.prior_spread (the aggregate posterior)",
    )
    prior_spread: float = Field(
        0.5, gt=0, description="latent_prior: mixture: width of each Gaussian relative to the fitted prior's"
    )
    prior_scale: float = Field(
        1.0, gt=0, description="latent_prior: fitted or standard: the Gaussian's width relative to itself (same "
        "mean and shape); > 1 samples further from the training encodings' centre, e.g. sqrt(1 + mean posterior "
        "variance / variance of the means) matches the aggregate posterior's second moment",
    )
    target: dict[str, float] | None = Field(
        None, description="property values to condition on, physical units; null samples the data distribution"
    )
    prior_focus: int | None = Field(
        None, ge=2, description="with a target: sample z from a Gaussian over the latent means of the N training "
        "samples nearest to the target (see Generator.focused_prior); null uses the whole fitted prior",
    )
    feedback_spread: float | None = Field(
        None, gt=0, description="campaigns with feedback (verified hits, best candidates so far): sample z from "
        "Gaussians around the feedback's encodings, each the fitted prior's shape scaled by this (a local search); "
        "null folds the feedback into the focused prior's single Gaussian",
    )
    sample_workers: int | None = Field(
        None, ge=1, description="CPU sampling: processes that sample batches side by side (forked, the torch "
        "threads divided among them) while this one decodes what they return; null: one per usable CPU when "
        "there are at least two batches and the platform forks (Linux), else 1; 1 samples here. Each batch has "
        "its own seed, so the samples do not depend on this",
    )


class FilterConfig(_Section):
    require_valid: bool = True
    require_unique: bool = True
    require_novel: bool = True
    max_elements_smact: int = Field(8, ge=1, description="compositions with more elements count as invalid")
    require_contains: tuple[str, ...] = Field(
        (), description="parts every kept candidate must have (crystals: element symbols, e.g. [Li])"
    )


class RankConfig(_Section):
    """Weighted ranking over z-scored terms: realism (up), penalty (down), properties by goal.

    A property key is one of ``data.properties`` (the discriminator's head, column ``pred_<key>``)
    or the surrogate's column ``sur_<surrogate.target>``; a column with a ``<column>_std`` beside
    it is ranked on its pessimistic value, ``mean +- uncertainty_weight * std``."""

    realism_weight: float = Field(1.0, ge=0)
    penalty_weight: float = Field(1.0, ge=0)
    property_weights: dict[str, float] = Field(default_factory=dict)
    property_goals: dict[str, Literal["minimize", "maximize", "target"]] = Field(default_factory=dict)
    uncertainty_weight: float = Field(1.0, ge=0, description="standard deviations a predicted value is made worse by")
    top_k: int = Field(20, ge=1, description="how many top candidates get CIF files and pictures")
    max_per_group: int | None = Field(
        None, ge=1, description="a diversity cap: candidates beyond the best N of their group (rank.group_by) rank "
        "after all others, in score order (kept, not dropped); null ranks on the score alone",
    )
    group_by: str = Field("formula", description="the candidate-table column that defines a group for "
                          "rank.max_per_group (crystals: formula, the reduced formula; molecules: e.g. smiles)")


class SurrogateSection(_Section):
    """The property surrogate of a closed loop: a deep ensemble trained on oracle labels, used to
    rank candidates and fine-tuned on every round's verified results."""

    labels: str = Field("data/labels/bvse_li.csv.gz", description="oracle labels table (`invdes label bvse`); "
                        "made by the campaign when missing")
    target: str = Field("e_3d", description="label column to predict, eV")
    start: str | None = Field(None, description="an ensemble from `invdes surrogate` to start from (e.g. the "
                              "held-out-evaluated one); null trains one on all labels (cached)")
    members: int = Field(5, ge=1)
    epochs: int = Field(30, ge=1, description="epochs of the initial training on all labels")
    finetune_epochs: int = Field(30, ge=1, description="epochs of fine-tuning after each round's verification")
    hidden: int = Field(64, ge=8)
    layers: int = Field(3, ge=1)
    cutoff: float = Field(4.0, gt=0, description="graph radius, Angstrom")
    element_features: bool = Field(True, description="node features from physical element properties "
                                   "(property_models/descriptors.py) plus a learnt per-element part")
    descriptors: bool = Field(True, description="feed the Li-environment descriptors (property_models/descriptors.py) "
                              "to the readout")
    log_target: bool = Field(True, description="learn the logarithm of the (positive) barrier")
    val_fraction: float = Field(0.0, ge=0, lt=0.5, description="inner validation split for early stopping; 0 trains "
                                "`epochs` epochs on all labels")
    stability: bool = Field(False, description="judge every scored candidate with static CHGNet: columns "
                            "`stab_excess` (energy per atom above a per-element reference fitted to training "
                            "crystals, eV/atom) and `stab_excess_percentile` (its percentile among the training "
                            "crystals'); both rankable, e.g. rank.property_goals.stab_excess_percentile: minimize")
    forest_weight: float = Field(0.0, ge=0, le=1, description="blend the ensemble with a random forest on the "
                                 "descriptors: prediction = members^(1-w) * forest^w (log target); the forest stays "
                                 "fixed when the loop fine-tunes")
    adv_method: Literal["none", "fgsm", "pgd"] = Field(
        "none", description="adversarial training of the surrogate (property_models/adversarial.py): FGSM or PGD "
        "atomic displacements of at most adv_epsilon mixed into every batch; `invdes robust crystal` measures "
        "whether it narrows the exploitation gap")
    adv_epsilon: float = Field(0.1, gt=0, description="adversarial training budget, Angstrom per atom")
    adv_steps: int = Field(3, ge=1, description="PGD steps per batch")
    adv_weight: float = Field(0.5, ge=0, le=1, description="adversarial share of the training loss")

    @property
    def column(self) -> str:
        return f"sur_{self.target}"


class VerifySection(_Section):
    """Independent verification of a closed loop's top candidates: the BVSE oracle and CHGNet."""

    top_k: int = Field(20, ge=1, description="candidates of each round verified (best ranked first)")
    time_limit_s: float = Field(60.0, gt=0, description="oracle time limit per structure")
    resolution: float = Field(0.2, ge=0.05, le=1.0, description="oracle grid spacing, Angstrom (as the labels')")
    workers: int = Field(2, ge=1, description="oracle worker processes")
    chgnet: bool = Field(True, description="CHGNet energy per atom and its excess over the training reference")
    relax_steps: int = Field(0, ge=0, description="FIRE steps before the CHGNet energy (0 = static)")
    reference_size: int = Field(400, ge=2, description="training crystals whose CHGNet energies fit the reference")
    hit_quantile: float = Field(0.1, gt=0, lt=1, description="a hit lies below this quantile of the training "
                                "structures' oracle values")
    final_top: int = Field(50, ge=1, description="best candidates of the final ranking verified for the report")
    baseline: int = Field(50, ge=1, description="random accepted candidates verified as the baseline")
    feedback: bool = Field(True, description="verified hits join the latent prior of later rounds")
    require_valences: bool = Field(
        True, description="verify (and report) only candidates whose oxidation states bond valence can assign, "
        "tested in rank order: the oracle cannot evaluate the others, and an ionic conductor needs them",
    )
    require_evaluable: bool = Field(
        True, description="verify (and report) only candidates the oracle evaluates without a failure (e.g. "
        "bond-valence parameters missing for a pair of ions), tested in rank order; the skipped ones are counted "
        "by reason (verify.json, enrichment.json)",
    )


class ActivitySection(_Section):
    """A goal-directed molecule campaign: activity ensembles (``invdes activity``) score every round's
    accepted candidates (columns ``act_<target>`` and ``act_<target>_std``, and ``act_min`` for the least
    active target; ``qed`` and ``sa`` are exact RDKit values; ``sim_<target>`` / ``sim_min`` the similarity to
    the nearest labelled active), the best ranked so far steer the next round's latent prior, and the end reports the
    final ranking's success rate (``property_models/goal.py``)."""

    targets: tuple[Literal["gsk3", "jnk3"], ...] = Field(
        ("gsk3",), description="activity models a candidate must satisfy (all of them: [gsk3, jnk3] is the dual goal)"
    )
    models: dict[str, str] = Field(
        default_factory=dict, description="target -> saved ensemble (`invdes activity --out`); a target without "
        "one uses runs/activity/<target>.pt, trained on the scaffold train split when missing",
    )
    datasets: dict[str, str] = Field(
        default_factory=dict, description="target -> labelled CSV (smiles and a 0/1 column named after the target, "
        "relative to the data root or absolute) replacing the shipped set, e.g. in-house assay data; used to "
        "train a missing model, seed round 0, mark rediscoveries and fit the judge",
    )
    members: int = Field(3, ge=1, description="ensemble members when a model is trained here")
    epochs: int = Field(10, ge=1, description="epochs per member when a model is trained here")
    active_threshold: float = Field(0.5, gt=0, lt=1, description="predicted probability that counts as active")
    qed_min: float = Field(0.6, ge=0, le=1, description="a success has QED at least this")
    sa_max: float = Field(4.0, ge=1, le=10, description="a success has an SA score at most this")
    seed_actives: int = Field(
        200, ge=0, description="labelled actives (those the models rate best on every target) whose encodings "
        "join round 0's latent prior; 0 starts from the generator's own prior",
    )
    feedback_top: int = Field(200, ge=0, description="best-ranked novel candidates so far whose encodings form "
                              "the next round's latent prior (with generate.prior_focus training molecules)")
    finetune_epochs: int = Field(
        10, ge=0, description="before each round the generator is fine-tuned (maximum likelihood, "
        "design/training/finetune.py) for this many passes over that round's feedback molecules, continuing from "
        "the previous round's: a hill climb toward the goal; 0 keeps the trained generator",
    )
    finetune_lr: float = Field(1e-3, gt=0, description="learning rate of that fine-tuning")
    domain_similarity: float = Field(
        0.0, ge=0, lt=1, description="applicability domain: a candidate whose Morgan Tanimoto similarity to the "
        "nearest labelled active (of the least similar target; column sim_min) is below this is ranked after every "
        "candidate within it, so feedback and the final ranking stay where the activity models have seen "
        "chemistry like it; 0 switches it off",
    )
    final_top: int = Field(1000, ge=1, description="best-ranked novel candidates the final report describes")
    baseline: int = Field(1000, ge=1, description="valid samples of the unsteered generator scored as the baseline")
    judge_trees: int = Field(300, ge=10, description="trees of the Morgan random forest that judges the final "
                             "candidates (an independent model; a gap to the GNN's rate shows exploitation)")

    @model_validator(mode="after")
    def _targets(self) -> ActivitySection:
        if len(set(self.targets)) != len(self.targets) or not self.targets:
            raise ValueError(f"activity.targets={list(self.targets)} must name one or more distinct targets")
        for key in ("models", "datasets"):
            unknown = sorted(set(getattr(self, key)) - set(self.targets))
            if unknown:
                raise ValueError(f"activity.{key} names {unknown}, which are not in activity.targets {list(self.targets)}")
        return self

    @property
    def columns(self) -> list[str]:
        return [f"act_{t}" for t in self.targets]


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<cwd>/mlflow.db")
    experiment: str = "crystal-discovery"
    registered_model: str = "crystal-generator"
    alias: str = "champion"


class OutputConfig(_Section):
    dir: str = Field("runs", description="root for discover outputs (relative to the working directory)")
    generator_cache: str = Field("runs/generators", description="trained generators, keyed by config hash")


class RunConfig(_Section):
    """A whole run: one YAML file."""

    name: str = "crystal"
    domain: Literal["crystal", "molecule"] = "crystal"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    penalty: PenaltyConfig = PenaltyConfig()
    generate: GenerateConfig = GenerateConfig()
    filter: FilterConfig = FilterConfig()
    rank: RankConfig = RankConfig()
    surrogate: SurrogateSection | None = None
    verify: VerifySection | None = None
    activity: ActivitySection | None = None
    tracking: TrackingConfig = TrackingConfig()
    output: OutputConfig = OutputConfig()
    molecule: MoleculeConfig | None = Field(None, description="molecule-domain settings (domain: molecule only)")

    @model_validator(mode="before")
    @classmethod
    def _domain_sections(cls, data):
        """A molecule run always has a ``molecule`` section (defaults filled in); a crystal run has none."""
        if isinstance(data, dict):
            if data.get("domain") == "molecule" and data.get("molecule") is None:
                data = {**data, "molecule": {}}
            elif data.get("domain", "crystal") == "crystal" and data.get("molecule") is not None:
                raise ValueError("the molecule section applies to domain: molecule only; remove it or set domain: molecule")
        return data

    @model_validator(mode="after")
    def _properties_known(self) -> RunConfig:
        props = set(self.data.properties)
        rankable = props | ({self.surrogate.column} if self.surrogate else set())
        if self.surrogate is not None and self.surrogate.stability:
            rankable |= {"stab_excess", "stab_excess_percentile"}
        if self.activity is not None:
            rankable |= set(self.activity.columns) | {"act_min", "qed", "sa", "sim_min"}
        for where, keys, known in (
            ("generate.target", (self.generate.target or {}).keys(), props),
            ("rank.property_weights", self.rank.property_weights.keys(), rankable),
            ("rank.property_goals", self.rank.property_goals.keys(), rankable),
        ):
            unknown = sorted(set(keys) - known)
            if unknown:
                raise ValueError(
                    f"{where} names {unknown}, which the model does not predict; "
                    f"use one of {sorted(known)} (data.properties, or sur_<target> with a surrogate section, "
                    "stab_excess[_percentile] with surrogate.stability, act_<target>, act_min, qed, sa and sim_min with "
                    "an activity section)"
                )
        if self.activity is not None and (self.domain != "molecule" or self.verify is not None):
            raise ValueError("an activity section applies to domain: molecule without a verify section; "
                             "remove it, or set domain: molecule and remove surrogate/verify")
        if self.verify is not None and self.surrogate is None:
            raise ValueError("a verify section needs a surrogate section (the model that ranks what is verified)")
        if self.generate.prior_scale != 1.0 and self.generate.latent_prior == "mixture":
            raise ValueError(
                f"generate.prior_scale={self.generate.prior_scale} widens the fitted or standard Gaussian, not the "
                "mixture; set generate.prior_spread for the mixture's width, or latent_prior: fitted"
            )
        if self.generate.prior_focus is not None and not self.generate.target:
            raise ValueError("generate.prior_focus needs generate.target (the property values to focus on)")
        for prop, goal in self.rank.property_goals.items():
            if goal == "target" and prop not in (self.generate.target or {}):
                raise ValueError(
                    f"rank.property_goals.{prop}='target' needs a value in generate.target.{prop}"
                )
        return self

    def generator_part(self) -> dict:
        """The sections that decide the trained generator (JSON-compatible); CPU thread count and
        the collapse-warning threshold do not change what is learnt and are left out."""
        d = self.model_dump(mode="json")
        part = {k: d[k] for k in ("domain", "seed", "data", "model", "train", "penalty")}
        if self.molecule is not None:  # absent for crystals, so their keys stay as they were
            part["molecule"] = d["molecule"]
        part["train"] = {k: v for k, v in part["train"].items() if k not in _RUN_CONTROL}
        for section, defaults in _LATER_DEFAULTS.items():
            if section not in part:
                continue
            part[section] = {k: v for k, v in part[section].items() if not (k in defaults and v == defaults[k])}
        return part


_RUN_CONTROL = ("threads", "collapse_uniqueness")
# options added after generators were cached: at their default they are left out of the generator
# key, so existing generators keep their keys (and are reused)
_LATER_DEFAULTS = {
    "train": {"adv_samples": None, "fm_relative": False, "lr_schedule": "constant", "lr_final": 0.05,
              "realism_critic": False, "critic_epochs": None, "penalty_prior": True,
              "d_after_generator": False, "precision": "fp32"},
    "data": {"property_table": None},
    "model": {"site_count": False, "decoder": "gru", "grammar_features": False, "grammar_valence": False},
    "molecule": {"root": "canonical"},
}


def generator_key(config: RunConfig) -> str:
    """Stable hash of the generator-defining part of ``config`` (12 hex digits)."""
    blob = json.dumps(config.generator_part(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def same_generator(stored: dict, config: RunConfig) -> bool:
    """Whether a config stored with a checkpoint (a dict) trains the same generator as ``config``.

    Only the generator-defining sections count: a campaign's name, rounds, ranking or tracking
    settings do not force retraining. A stored config that no longer validates never matches.
    """
    try:
        return config_from_dict(stored).generator_part() == config.generator_part()
    except ConfigError:
        return False


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{loc}': remove it or check its spelling against configs/crystal.yaml")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  - {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def config_from_dict(data: dict, source: str = "<dict>") -> RunConfig:
    """Validate a plain mapping into a frozen :class:`RunConfig`; raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a YAML run config, apply nested ``overrides`` and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass one of the files in configs/")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if overrides:
        data = merge(data, overrides)
    return config_from_dict(data, str(path))


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; values in ``override`` win."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(flatten_differences(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
