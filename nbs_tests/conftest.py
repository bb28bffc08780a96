"""Shared fixtures for looplab's pytest modules."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tool():
    "Path of a command installed in the project's environment."

    def find(name: str) -> str:
        path = BIN / name
        assert path.is_file(), f"{name} is not installed in {BIN}; run make setup"
        return str(path)

    return find


@pytest.fixture(scope="session")
def quiet_env() -> dict[str, str]:
    "The environment for child processes: no telemetry, unbuffered output."
    return {**os.environ, "DO_NOT_TRACK": "1", "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
