import pytest

from design.utils import atomic_path, atomic_write_text


def test_atomic_write_never_leaves_a_half_written_file(tmp_path):
    target = tmp_path / "table.csv"
    atomic_write_text(target, "old,complete\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new,half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old,complete\n"  # the previous complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary file left behind
    atomic_write_text(target, "new,complete\n")
    assert target.read_text() == "new,complete\n"
