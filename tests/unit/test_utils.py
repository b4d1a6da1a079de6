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


def test_file_lock_makes_a_second_holder_wait(tmp_path):
    import subprocess
    import sys
    import time

    from design.utils import file_lock

    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom design.utils import file_lock\n"
         f"with file_lock({str(lock)!r}):\n    print('held', flush=True)\n    time.sleep(1.5)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    waited = []
    start = time.monotonic()
    with file_lock(lock, on_wait=lambda: waited.append(True)):
        elapsed = time.monotonic() - start
    holder.wait(timeout=30)
    assert waited == [True] and elapsed > 0.5  # it waited for the other process to let go
    with file_lock(lock, on_wait=lambda: waited.append(False)):
        pass
    assert waited == [True]  # a free lock is taken without waiting


def test_strict_json_writes_null_for_undefined_numbers():
    import json

    from design.utils import strict_json

    text = strict_json({"rate": float("nan"), "ratio": float("inf"), "rows": [1.5, float("-inf")], "n": 3})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"rate": None, "ratio": None, "rows": [1.5, None], "n": 3}
