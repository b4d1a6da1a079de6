"""Prefect's local API, started once per process and safely when several campaigns start at once.

Without ``PREFECT_API_URL`` the first flow call of a process starts a temporary local API server on
the SQLite database in ``PREFECT_HOME``, creating and migrating that database on first use. Two
processes migrating a new database at the same moment collide (one server dies at start-up with
"No such constraint: ..."; its campaign fails). The CLI therefore starts the server under an
exclusive lock file in ``PREFECT_HOME`` before it runs a flow; the flows of that process reuse the
running server. With a real server (``PREFECT_API_URL`` set) there is nothing to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from design.utils import file_lock

# two servers starting at once on a small machine can take longer than Prefect's default 20 s
STARTUP_TIMEOUT_S = "90"
LOCK_NAME = "invdes-api-start.lock"


def start_local_api() -> str | None:
    """Start (or find) this process's Prefect API; return its URL, or None when a real server is
    configured."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S)
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():
        return None
    with file_lock(Path(PREFECT_HOME.value()).expanduser() / LOCK_NAME):
        with get_client(sync_client=True) as client:
            client.hello()
            return str(client.api_url)
