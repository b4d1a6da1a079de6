import gzip
import hashlib
import logging

import numpy as np
import pandas as pd
import pytest

from design.data import sources
from design.data.crystals import DatasetFormatError, load_crystal_dataset
from design.data.sources import DataNotFoundError, resolve

from testkit import TRAIN


def _real_rows(n):
    return pd.read_csv(resolve(TRAIN), nrows=n)


def test_mirror_then_cache_order(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    cache = tmp_path / "cache"
    (mirror / "x").mkdir(parents=True)
    (mirror / "x" / "f.csv").write_text("mirror")
    monkeypatch.setenv("INVDES_DATA_MIRROR", str(mirror))
    monkeypatch.setenv("INVDES_DATA_CACHE", str(cache))
    assert resolve("x/f.csv").read_text() == "mirror"
    (cache / "x").mkdir(parents=True)
    (cache / "x" / "f.csv").write_text("cache")
    assert resolve("x/f.csv").read_text() == "cache"


def test_missing_file_error_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("INVDES_DATA_MIRROR", str(tmp_path))
    monkeypatch.setenv("INVDES_DATA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="INVDES_DATA_MIRROR"):
        resolve("nowhere/none.csv.gz")


def test_download_checks_sha256(tmp_path, monkeypatch):
    src = tmp_path / "public.csv"
    src.write_text("material_id,cif\n")
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setenv("INVDES_DATA_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setenv("INVDES_DATA_CACHE", str(tmp_path / "cache"))
    entry = {"url": src.as_uri(), "sha256": good}
    monkeypatch.setattr(sources, "manifest", lambda path=None: {"d/ok.csv": entry, "d/bad.csv": {**entry, "sha256": "0" * 64}})
    assert resolve("d/ok.csv").read_text() == "material_id,cif\n"
    assert (tmp_path / "cache" / "d" / "ok.csv").is_file()
    with pytest.raises(DataNotFoundError, match="sha256"):
        resolve("d/bad.csv")
    assert not (tmp_path / "cache" / "d" / "bad.csv").exists()  # nothing half-written is left


def test_bad_rows_are_skipped_and_counted(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("INVDES_DATA_CACHE", str(tmp_path / "cache"))
    df = _real_rows(6)
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    disordered = Structure(Lattice.cubic(4.2), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rng = np.random.default_rng(0)  # 24 atoms at random positions: no smaller primitive cell
    big = Structure(Lattice.cubic(9.0), ["Si", "O", "O"] * 8, rng.random((24, 3)))
    bad = pd.DataFrame(
        {
            "material_id": ["broken", "empty", "nan-prop", "inf-prop", "partial-occupancy", "too-many-sites"],
            "cif": ["data_x\n_cell_length_a 3\nnot a cif", "", df["cif"][0], df["cif"][1],
                    str(CifWriter(disordered)), str(CifWriter(big))],
            "formation_energy_per_atom": [-1.0, -1.0, float("nan"), float("inf"), -1.0, -1.0],
        }
    )
    path = tmp_path / "mixed.csv.gz"
    with gzip.open(path, "wt") as f:
        pd.concat([df[["material_id", "cif", "formation_energy_per_atom"]], bad]).to_csv(f, index=False)
    with caplog.at_level(logging.WARNING):
        ds = load_crystal_dataset(str(path), ["formation_energy_per_atom"], max_sites=20)
    assert len(ds) == 6
    assert ds.skipped == {
        "cif does not parse": 1,
        "empty cif": 1,
        "property not finite": 2,
        "partial occupancy (disordered sites) is not supported": 1,
        "more than max_sites=20 sites": 1,
    }
    assert "skipped 6 of 12 rows" in caplog.text
    assert ds.y.shape == (6, 1)


def test_wrong_columns_and_empty_file(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("id,structure\n1,x\n")
    with pytest.raises(DatasetFormatError, match=r"lacks columns \['material_id', 'cif'"):
        load_crystal_dataset(str(path), ["band_gap"], max_sites=20)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetFormatError, match="empty"):
        load_crystal_dataset(str(empty), ["band_gap"], max_sites=20)


def test_features_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("INVDES_DATA_CACHE", str(tmp_path / "cache"))
    first = load_crystal_dataset(TRAIN, ["formation_energy_per_atom", "band_gap"], max_sites=20, limit=40)
    assert list((tmp_path / "cache" / "features").rglob("*.pt"))
    import design.data.crystals as crystals

    monkeypatch.setattr(crystals, "featurize_table", lambda *a, **k: pytest.fail("cache was not used"))
    second = load_crystal_dataset(TRAIN, ["formation_energy_per_atom", "band_gap"], max_sites=20, limit=40)
    assert second.ids == first.ids
    assert (second.tensors.z == first.tensors.z).all()
    assert second.y.shape == (40, 2)


def test_property_table_supplies_missing_properties(tmp_path, monkeypatch):
    monkeypatch.setenv("INVDES_DATA_CACHE", str(tmp_path / "cache"))
    df = pd.read_csv(resolve(TRAIN), nrows=12)
    table = pd.DataFrame({"material_id": df["material_id"][:10], "e_3d": np.linspace(0.1, 1.0, 10)})
    table.loc[3, "e_3d"] = float("inf")  # a bad label: that row is skipped, not fatal
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    ds = load_crystal_dataset(TRAIN, ["formation_energy_per_atom", "e_3d"], max_sites=20, limit=12, property_table=path)
    assert ds.ids == [i for k, i in enumerate(df["material_id"][:10]) if k != 3]  # rows 10, 11 have no label
    assert ds.skipped == {"property not finite": 3}
    np.testing.assert_allclose(ds.y[:, 1].numpy(), np.delete(np.linspace(0.1, 1.0, 10), 3), rtol=1e-6)
    table.drop(columns="e_3d").to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match=r"property table .* lacks columns \['e_3d'\]"):
        load_crystal_dataset(TRAIN, ["e_3d"], max_sites=20, limit=12, property_table=path)
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_crystal_dataset(TRAIN, ["e_3d"], max_sites=20, limit=12, property_table=tmp_path / "missing.csv")
