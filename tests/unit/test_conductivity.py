"""OBELiX conductivity model (property_models/conductivity.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from property_models.conductivity import cross_validate, load_obelix, parse_conductivity


def test_conductivity_cells_parse_and_detection_limit_is_censored():
    assert parse_conductivity("1.58489e-06") == (pytest.approx(math.log10(1.58489e-06)), False)
    assert parse_conductivity("<1E-10") == (-10.0, True)
    assert parse_conductivity(" <1e-8 ") == (-10.0, True)  # a censored value never exceeds the limit
    assert math.isnan(parse_conductivity("n/a")[0]) and math.isnan(parse_conductivity("0")[0])


@pytest.fixture(scope="module")
def obelix():
    return load_obelix()


def test_obelix_loads_every_row(obelix):
    assert len(obelix.ids) == 478 and obelix.censored.sum() == 29
    assert np.all(obelix.log10_sigma[obelix.censored] == -10.0)
    assert np.isfinite(obelix.log10_sigma).all()


def test_grouped_cross_validation_beats_the_mean_predictor(obelix):
    r = cross_validate(obelix, folds=3, trees=30)
    assert r["n"] == 478 and sum(f["n_test"] for f in r["per_fold"]) == 478
    assert r["spearman"] > 0.5  # composition carries the conductivity signal; a broken model scores ~0
    assert r["mae_log10"] < np.abs(obelix.log10_sigma - obelix.log10_sigma.mean()).mean()
    with pytest.raises(ValueError, match="folds"):
        cross_validate(obelix, folds=1)
