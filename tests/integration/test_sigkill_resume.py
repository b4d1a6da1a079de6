"""SIGKILL a training process, run the same command again: it resumes and ends where an unbroken run ends."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from design.training.checkpoint import load_checkpoint
from design.training.trainer import FINAL_NAME, RESUME_NAME

TESTS = Path(__file__).resolve().parents[1]
WORKER = """
import sys
from testkit import tiny_config
from design.data import training_set
from design.domains import build_domain
from design.training.trainer import Trainer
cfg = tiny_config(train={"epochs": 8, "threads": 1})
dom = build_domain(cfg)
ds = training_set(dom, cfg)
Trainer(cfg, dom, ds, sys.argv[1]).run()
"""


def _start(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(workdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkilled_training_resumes_to_the_same_weights(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = _start(full)
    assert p.wait(timeout=300) == 0, p.stdout.read()[-3000:]

    p = _start(cut)
    deadline = time.time() + 300
    while not (cut / RESUME_NAME).exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert not (cut / FINAL_NAME).exists()
    killed_at = load_checkpoint(cut / RESUME_NAME)["epoch"]
    assert 1 <= killed_at < 8

    p = _start(cut)
    assert p.wait(timeout=300) == 0, p.stdout.read()[-3000:]
    a, b = load_checkpoint(full / FINAL_NAME), load_checkpoint(cut / FINAL_NAME)
    assert len(b["history"]) == 8
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time_s", "cpu_s")} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
