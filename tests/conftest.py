"""Shared fixtures: a real embedded host on a loopback port, small multi-coil scans."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def stream_host():
    """The embedded host, serving the shipped pipelines plus the test gadgets."""
    from pipelines.host import StreamHost
    from pipelines.protocol import Limits
    from pipelines.session import SessionOptions

    options = SessionOptions(
        limits=Limits(max_payload_bytes=8 * 2**20, max_text_bytes=2**20),
        search_dirs=(ROOT / "tests" / "pipelines",),
        allowed_packages=("gadgets", "tests.gadgets_for_tests"),
        gadget_timeout_s=60,
    )
    host = StreamHost("127.0.0.1", 0, options, idle_timeout_s=10.0)
    host.start_background()
    yield host
    host.shutdown()
    host.server_close()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.WARNING)


@pytest.fixture(autouse=True)
def reference_store(tmp_path, monkeypatch):
    """The host's multi-contrast reference store, a fresh folder per test (never the user's cache)."""
    folder = tmp_path / "reference_store"
    monkeypatch.setenv("STREAMRECON_REFERENCE_STORE", str(folder))
    return folder
