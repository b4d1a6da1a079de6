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


def test_training_precision_resolution(monkeypatch):
    """``train.precision``: fp32 and bf16 as asked; auto follows the device's bf16 units; a CPU without
    them reads as such; an unknown name is refused with the choices."""
    import torch

    from design import utils

    cpu = torch.device("cpu")
    assert utils.autocast_dtype("fp32", cpu) is None
    assert utils.autocast_dtype("bf16", cpu) is torch.bfloat16
    for native, want in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(utils, "native_bf16", lambda device, native=native: native)
        assert utils.autocast_dtype("auto", cpu) is want
    monkeypatch.undo()
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert utils.native_bf16(cpu) is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert utils.native_bf16(cpu) is True
    assert utils.native_bf16(torch.device("meta")) is False
    with pytest.raises(ValueError, match="fp32, bf16, auto"):
        utils.autocast_dtype("fp16", cpu)
    # networks that do not train in bf16: auto keeps float32, bf16 is refused naming them
    monkeypatch.setattr(utils, "native_bf16", lambda device: True)
    assert utils.autocast_dtype("auto", cpu, supported=False) is None
    with pytest.raises(ValueError, match="the crystal domain; use fp32 or auto"):
        utils.autocast_dtype("bf16", cpu, supported=False, who="the crystal domain")
