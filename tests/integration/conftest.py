"""One Prefect test harness for all integration tests (its own PREFECT_HOME, 90 s to start)."""

from __future__ import annotations

import os
import tempfile

import pytest

# Prefect reads PREFECT_HOME when it is first imported; give the tests their own before that.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="invdes-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
