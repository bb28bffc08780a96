"""What every benchmark shares: a project copy to run in, machine facts, progress, the result file."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from looplab.core import copy_project_files

ROOT = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    "Progress, on standard error (standard output carries the one summary line)."
    print(message, file=sys.stderr, flush=True)


def copy_project(destination: Path) -> Path:
    """The project's own files `kedro run` needs, as a fresh clone has them (never the data, stores or
    conf/local a run of the checkout left behind), so runs write only into `destination`."""
    return copy_project_files(ROOT, destination, only=("pyproject.toml", "kedro.yml", ".telemetry", "conf", "src", "notebooks/runs", "data"))


def machine(packages: tuple[str, ...]) -> dict:
    "Cores, memory, load, Python and the versions of `packages`: what a figure was measured on."
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": memory,
        "load_average_1min": os.getloadavg()[0],  # at the start: other work on the machine widens the spread
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "packages": versions,
    }


def write_result(result: dict, out: Path) -> int:
    "Write the JSON result, print its summary line; the exit status of a finished benchmark."
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {out}")
    print(result["summary"])
    return 0
