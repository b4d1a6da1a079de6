"""The BVSE labels flow on a small real source: parallel chunks, table, provenance, resumable cache."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from design.data.sources import resolve

pytestmark = pytest.mark.integration


def test_label_flow_writes_table_and_provenance_and_reuses_the_cache(prefect_harness, tmp_path, monkeypatch):
    from flows.labels import run
    from property_models.labels import provenance_path, read_labels

    # the first Li-containing rows of the real mp_20 test split, as their own source file
    df = pd.read_csv(resolve("crystals/mp_20_biternary/test.csv.gz"))
    small = df[df["elements"].str.contains("'Li'")].head(6)[["material_id", "cif"]]
    small = pd.concat([small, df[~df["elements"].str.contains("'Li'")].head(2)[["material_id", "cif"]]])
    small.to_csv(tmp_path / "small.csv", index=False)
    monkeypatch.setenv("INVDES_DATA_MIRROR", str(tmp_path))
    cache = tmp_path / "cache"
    out = tmp_path / "labels.csv.gz"

    prov = run(str(out), workers=2, sources=["small.csv"], settings={"time_limit_s": 120}, chunk=2, cache=str(cache))
    table = read_labels(out)
    assert len(table) == 6 and set(table["source"]) == {"small.csv"}
    assert prov["sources"]["small.csv"]["skipped"]["without_element"] == 2
    assert prov["counts"]["ok"] == int(table["ok"].sum()) >= 1
    ok = table[table["ok"]]
    assert all(math.isfinite(x) for x in ok["e_1d"]) and (ok["e_1d"] <= ok["e_3d"]).all()
    assert (table.loc[~table["ok"], "failure"] != "").all()
    assert json.loads(provenance_path(out).read_text())["oracle"]["mobile_ion"] == "Li1+"
    assert len(list(cache.rglob("*.json"))) == 6

    # a second run computes nothing: every result comes from the cache
    again = run(str(out), workers=1, sources=["small.csv"], settings={"time_limit_s": 120}, chunk=6, cache=str(cache))
    assert again["counts"] == prov["counts"]
    assert read_labels(out)[["e_1d", "e_3d", "failure"]].equals(table[["e_1d", "e_3d", "failure"]])
