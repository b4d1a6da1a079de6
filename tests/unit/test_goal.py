"""Goal-directed molecule campaigns (property_models/goal.py): config, scoring, feedback, report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem

from design.config import ConfigError
from design.domains.molecule.chemistry import descriptor
from design.generation.loop import round_dir
from design.generation.tables import write_table
from design.models.latent_prior import GaussianPrior, MixturePrior
from property_models import goal

from testkit import TINY_ACTIVITY, tiny_activity_files, tiny_molecule_config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_activity_files(tmp_path_factory.mktemp("activity"))


def _cfg(files, **activity):
    csv, model = files
    section = {"datasets": {"gsk3": str(csv)}, "models": {"gsk3": str(model)}, "seed_actives": 3,
               "feedback_top": 4, "final_top": 5, "baseline": 8, "judge_trees": 10, **activity}
    return tiny_molecule_config(
        activity=section,
        rank={"property_weights": {"act_gsk3": 2.0, "qed": 1.0, "sa": 1.0},
              "property_goals": {"act_gsk3": "maximize", "qed": "maximize", "sa": "minimize"}},
    )


def _accepted(smiles, k):
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    return pd.DataFrame({
        "id": [f"r{k:02d}-{i:06d}" for i in range(len(smiles))], "round": k, "smiles": smiles,
        "qed": [descriptor("qed", m) for m in mols], "sa": [descriptor("sa", m) for m in mols],
        "realism": 0.5, "penalty": 0.0, "structure": smiles, "novel": True,
    })


def test_activity_section_is_validated(files):
    with pytest.raises(ConfigError, match="activity.models names \\['jnk3'\\]"):
        _cfg(files, models={"jnk3": "x.pt"})
    with pytest.raises(ConfigError, match="distinct targets"):
        _cfg(files, targets=["gsk3", "gsk3"])
    with pytest.raises(ConfigError, match="act_jnk3"):  # ranked on a target the section does not predict
        tiny_molecule_config(activity={}, rank={"property_weights": {"act_jnk3": 1.0}})
    from testkit import tiny_config

    with pytest.raises(ConfigError, match="activity section applies to domain: molecule"):
        tiny_config(activity={})
    assert _cfg(files, targets=["gsk3", "jnk3"], models={}, datasets={}).activity.columns == ["act_gsk3", "act_jnk3"]


def test_sa_score_orders_simple_and_complex_molecules():
    simple = descriptor("sa", Chem.MolFromSmiles("CCO"))
    complex_ = descriptor("sa", Chem.MolFromSmiles("CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2O"))  # testosterone
    assert 1.0 <= simple < 2.5 < complex_ <= 10.0


def test_success_needs_every_criterion(files):
    cfg = _cfg(files)
    table = pd.DataFrame({"act_gsk3": [0.9, 0.4, 0.9, 0.9, np.nan], "qed": [0.7, 0.7, 0.5, 0.7, 0.7],
                          "sa": [3.0, 3.0, 3.0, 4.5, 3.0]})
    assert goal.success(cfg, table).tolist() == [True, False, False, False, False]


def test_scoring_marks_rediscoveries_and_predicts_the_rule(files, tmp_path):
    cfg = _cfg(files)
    # an aromatic and an aliphatic molecule outside the labelled set, and a labelled one written differently
    table = _accepted(["c1ccc(CC(=O)N)cc1", "CCCCCCO", "Oc1ccccc1"], 0)
    scored = goal.score_table(cfg, table, {"gsk3": str(files[1])})
    assert scored["known"].tolist() == [False, False, True]
    assert scored["act_gsk3"][0] > 0.5 > scored["act_gsk3"][1]  # the tiny model learnt "aromatic = active"
    assert (scored["act_gsk3_std"] >= 0).all()
    assert scored["success"].tolist() == goal.success(cfg, scored).tolist()


def test_rounds_rank_feed_back_and_resume(files, tmp_path):
    cfg = _cfg(files)
    models = {"gsk3": str(files[1])}
    first = ["c1ccc(CC(=O)N)cc1", "CCCCCCO", "Oc1ccccc1", "c1ccc(OC)cc1C", "CC(C)CCCO"]
    write_table(_accepted(first, 0), round_dir(tmp_path, 0) / "accepted.csv.gz")
    seeds = goal.feedback(cfg, tmp_path, 0, models, encodable=lambda s: True)
    labelled_actives = {Chem.CanonSmiles(s) for s, y in TINY_ACTIVITY if y}
    assert len(seeds) == 3 and set(seeds) <= labelled_actives
    assert (tmp_path / "seed_actives.csv").is_file()  # cached for a resumed campaign
    assert goal.feedback(cfg, tmp_path, 0, models, encodable=lambda s: s != seeds[0]) == seeds[1:]

    metrics = goal.score_round(cfg, 0, tmp_path, models)
    assert metrics["known"] == 1 and metrics["n"] == 4
    assert goal.finished_round(tmp_path, 0)["goal_known"] == 1
    assert goal.finished_round(tmp_path, 1) is None
    ranked = goal.ranked_so_far(cfg, tmp_path, 0)
    assert "Oc1ccccc1" not in set(ranked["smiles"])  # a rediscovery is never ranked
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    best = goal.feedback(cfg, tmp_path, 1, models, encodable=lambda s: True)
    assert best == ranked["smiles"].head(cfg.activity.feedback_top).tolist()
    assert goal.model_paths(cfg)["gsk3"] == files[1]


def test_similarity_to_actives_and_the_applicability_domain_ranking(files, tmp_path):
    models = {"gsk3": str(files[1])}
    # a close analogue of labelled actives (phenol, p-cresol) and two molecules unlike any of them
    smiles = ["Oc1ccc(CC)cc1", "CCCCCCCCCCO", "CC1CCCCC1CCN", "garbage("]
    sims = goal.similarity_to_actives(_cfg(files), smiles)
    assert list(sims.columns) == ["sim_gsk3", "sim_min"]
    assert sims["sim_gsk3"][0] > 0.3 > sims["sim_gsk3"][1] and np.isnan(sims["sim_min"][3])
    assert np.allclose(sims["sim_gsk3"][:3], sims["sim_min"][:3])

    table = _accepted(smiles[:3], 0)
    table["qed"], table["sa"] = 0.7, 2.0  # only activity and the domain decide
    scored = goal.score_table(_cfg(files), table, models)
    tau = float(scored["sim_min"][0]) - 1e-6  # only the analogue is within the domain
    plain = goal.rank_novel(_cfg(files), scored)
    gated = goal.rank_novel(_cfg(files, domain_similarity=tau), scored)
    assert "in_domain" not in plain and gated["in_domain"].tolist() == [True, False, False]
    assert gated["smiles"][0] == smiles[0] and gated["rank"].tolist() == [1, 2, 3]
    assert gated["smiles"].tolist()[1:] == [s for s in plain["smiles"] if s != smiles[0]]  # order kept outside
    m = goal.rate_metrics(_cfg(files, domain_similarity=tau), scored)
    assert m["in_domain_rate"] == pytest.approx(1 / 3) and m["mean_sim_min"] == pytest.approx(scored["sim_min"].mean())
    with pytest.raises(ValueError, match="sim_min column"):  # rounds scored before the column existed
        goal.rank_novel(_cfg(files, domain_similarity=0.4), scored.drop(columns=["sim_min"]))


def test_rate_metrics_count_what_they_say(files):
    cfg = _cfg(files)
    table = pd.DataFrame({"smiles": ["c1ccccc1CC(=O)N", "CCCCO", "c1ccccc1CC(=O)N"], "act_gsk3": [0.8, 0.2, 0.8],
                          "qed": [0.7, 0.4, 0.7], "sa": [2.0, 2.0, 2.0], "novel": [True, False, True]})
    m = goal.rate_metrics(cfg, table)
    assert m["n"] == 3 and m["success_rate"] == pytest.approx(2 / 3) and m["active_rate_gsk3"] == pytest.approx(2 / 3)
    assert m["qed_ok_rate"] == pytest.approx(2 / 3) and m["novelty"] == pytest.approx(2 / 3)
    assert m["uniqueness"] == pytest.approx(2 / 3)
    assert 0.0 < m["internal_diversity"] < 1.0 and "snn_actives" not in m
    near = goal.rate_metrics(cfg, table.iloc[[0, 2]], actives=goal._bits(["c1ccccc1CC(=O)N", "CCCCCCCCO"]))
    assert near["snn_actives"] == pytest.approx(1.0)  # each molecule is a labelled active itself


def test_missing_configured_model_is_a_clear_error(files, tmp_path):
    cfg = _cfg(files, models={"gsk3": str(tmp_path / "none.pt")})
    with pytest.raises(FileNotFoundError, match="invdes activity --target gsk3"):
        goal.ensure_models(cfg)


def test_mixture_prior_samples_around_its_centres():
    import torch

    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0]])
    prior = MixturePrior.around(centres, GaussianPrior.standard(2), spread=0.1)
    z = prior.sample(400, generator=torch.Generator().manual_seed(0))
    near = torch.cdist(z, centres).min(1).values
    assert near.max() < 1.0  # every sample within 10 sd of a centre
    assert 100 < int((z[:, 0] > 0).sum()) < 300  # both centres used
    with pytest.raises(ValueError, match="spread must be > 0"):
        MixturePrior.around(centres, GaussianPrior.standard(2), spread=0.0)


def test_act_min_is_the_least_active_target(files, tmp_path):
    from testkit import tiny_activity_files

    _, other = tiny_activity_files(tmp_path, target="jnk3")
    smiles = ["c1ccc(CC(=O)N)cc1", "CCCCCCO", "c1ccncc1C"]
    pred = goal.predict({"gsk3": str(files[1]), "jnk3": str(other)}, smiles)
    both = pred[["act_gsk3", "act_jnk3"]].to_numpy()
    assert np.allclose(pred["act_min"], both.min(1))
    worst = both.argmin(1)
    stds = pred[["act_gsk3_std", "act_jnk3_std"]].to_numpy()
    assert np.allclose(pred["act_min_std"], stds[np.arange(3), worst])
    single = goal.predict({"gsk3": str(files[1])}, smiles)
    assert np.allclose(single["act_min"], single["act_gsk3"])


def test_steer_samples_from_the_latest_generator_when_nothing_is_fine_tuned(files, tmp_path):
    models = {"gsk3": str(files[1])}
    cfg = _cfg(files, finetune_epochs=0)
    smiles, checkpoint = goal.steer(cfg, tmp_path, 0, models, "base.pt", encodable=lambda s: True)
    assert len(smiles) == 3 and checkpoint == "base.pt"
    tuned = round_dir(tmp_path, 0) / "generator.pt"  # a generator an earlier round fine-tuned
    tuned.parent.mkdir(parents=True, exist_ok=True)
    tuned.write_bytes(b"")
    smiles, checkpoint = goal.steer(_cfg(files), tmp_path, 1, models, "base.pt", encodable=lambda s: True)
    assert smiles == [] and checkpoint == str(tuned)  # no round scored yet: nothing to learn, latest kept
