"""Benchmark metrics: hand-computed coverage, Wasserstein distances, fingerprint invariances."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from design.metrics import crystal as cm


def _fps(struct_rows, comp_rows):
    s = np.zeros((len(struct_rows), cm.STRUCT_DIM))
    c = np.zeros((len(comp_rows), cm.COMP_DIM))
    s[:, 0] = struct_rows
    c[:, 0] = comp_rows
    return cm.Fingerprints(s, c)


IDENTITY = cm.Scaler(np.zeros(cm.COMP_DIM), np.ones(cm.COMP_DIM))


def test_coverage_by_hand():
    # reference at struct 0, 1, 2 (comp all 0); generated at 0.1 and 1.5 (comp 0 and 20)
    ref = _fps([0.0, 1.0, 2.0], [0.0, 0.0, 0.0])
    gen = _fps([0.1, 1.5], [0.0, 20.0])
    m = cm.coverage(gen, ref, IDENTITY, struct_cutoff=0.4, comp_cutoff=10.0)
    # recall: struct nearest distances 0.1, 0.5, 0.5 -> only ref 0 within 0.4; comp nearest 0 for all
    assert m["cov_recall"] == pytest.approx(1 / 3)
    # precision: gen 0.1 -> struct 0.1, comp 0 (ok); gen 1.5 -> struct 0.5 (too far) -> 1/2
    assert m["cov_precision"] == pytest.approx(1 / 2)
    assert m["amsd_recall"] == pytest.approx((0.1 + 0.5 + 0.5) / 3)
    # each criterion alone: structure limits recall and precision, composition only precision
    assert m["cov_recall_struct"] == pytest.approx(1 / 3) and m["cov_recall_comp"] == 1.0
    assert m["cov_precision_struct"] == pytest.approx(1 / 2) and m["cov_precision_comp"] == pytest.approx(1 / 2)
    assert m["amcd_precision"] == pytest.approx((0 + 20) / 2)


def test_coverage_by_reference_size():
    # references of 2, 6, 6 and 20 sites; only the first and one 6-site crystal are covered
    ref = _fps([0.0, 1.0, 2.0, 5.0], [0.0, 0.0, 0.0, 0.0])
    gen = _fps([0.1, 1.1], [0.0, 0.0])
    m = cm.coverage(gen, ref, IDENTITY, reference_sites=[2, 6, 6, 20])
    assert m["cov_recall_sites_1_4"] == 1.0 and m["cov_recall_sites_5_8"] == 0.5
    assert m["cov_recall_sites_17_20"] == 0.0 and np.isnan(m["cov_recall_sites_9_12"])
    assert "cov_recall_sites_1_4" not in cm.coverage(gen, ref, IDENTITY)


def test_coverage_takes_the_two_nearest_neighbours_separately():
    # the structure-nearest and composition-nearest generated crystals differ: CDVAE counts it covered
    ref = _fps([0.0], [0.0])
    gen = _fps([0.0, 5.0], [50.0, 0.0])
    assert cm.coverage(gen, ref, IDENTITY)["cov_recall"] == 1.0


def test_coverage_leaves_out_failed_fingerprints():
    ref = _fps([0.0, 1.0], [0.0, 0.0])
    gen = _fps([0.0, 1.0], [0.0, 0.0])
    gen.struct[1] = np.nan
    m = cm.coverage(gen, ref, IDENTITY)
    assert m["cov_generated_used"] == 1 and gen.failed == 1
    assert m["cov_recall"] == 0.5 and m["cov_precision"] == 1.0
    gen.struct[0] = np.nan
    with pytest.raises(ValueError, match="usable generated=0"):
        cm.coverage(gen, ref, IDENTITY)


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 7)), rng.normal(size=(50, 7))
    brute = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(cm._nearest(a, b, block=64), brute, atol=1e-9)


def test_scaler_standardises_and_guards_constant_columns():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 1.0]])
    sc = cm.fit_scaler(x)
    np.testing.assert_allclose(sc.transform(np.array([[2.0, 5.0]])), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="at least 2"):
        cm.fit_scaler(x[2:])


def test_wasserstein_by_hand():
    assert cm.wasserstein(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert cm.wasserstein(np.array([1.0, 2.0]), np.array([2.0, 3.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty"):
        cm.wasserstein(np.array([]), np.array([1.0]))


def _rock_salt():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_fingerprints_are_invariant_to_cell_choice():
    conv = _rock_salt()
    prim = conv.get_primitive_structure()
    sup = prim.copy()
    sup.make_supercell([2, 1, 1])
    fps = cm.fingerprints([conv, prim, sup])
    assert fps.struct.shape == (3, cm.STRUCT_DIM) and fps.comp.shape == (3, cm.COMP_DIM)
    assert fps.failed == 0
    np.testing.assert_allclose(fps.struct[0], fps.struct[1], atol=1e-8)
    np.testing.assert_allclose(fps.struct[0], fps.struct[2], atol=1e-8)
    np.testing.assert_allclose(fps.comp[0], fps.comp[2], atol=1e-8)
    # octahedral coordination in rock salt: the fingerprint is not all zeros
    assert fps.struct[0].max() > 0.5


def test_density_and_element_counts():
    s = _rock_salt()
    assert cm.density([s])[0] == pytest.approx(s.density)
    assert cm.n_elements([s]).tolist() == [2.0]
