"""The streaming figures of the data benchmark: one big landing CSV through `kedro run -p data`, then a run with nothing new.

Each measurement is a fresh process whose peak RSS is read with `getrusage` once it has ended:
the anchor reads the same file with `pyarrow.csv.read_csv` alone; then `kedro run -p data` in a
clean copy of the project takes the file (beside the demo's own sources); then the same command
again finds nothing new; then, once more with nothing new, the same run inside one Python process
splits Kedro's start-up (imports, project, session) from the data pipeline's own time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import copy_project, say

PEAK_RSS_MB_MAX = 1536   # `kedro run -p data` taking one 200 MB landing CSV
NOOP_SECONDS_MAX = 5.0   # `kedro run -p data` with nothing new
SPLIT = """
import json, time
started = time.perf_counter()
from pathlib import Path
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
bootstrap_project(Path.cwd())
pipelines.set_requested(["data"])
pipelines["data"]  # imports the pipeline's modules, as `kedro run -p data` does before it runs
with KedroSession.create(project_path=Path.cwd()) as session:
    ready = time.perf_counter()
    session.run(pipeline_names=["data"])
print(json.dumps({"startup_seconds": ready - started, "pipeline_seconds": time.perf_counter() - ready}))
"""
ANCHOR = """
import sys, time
import pyarrow.csv
started = time.perf_counter()
table = pyarrow.csv.read_csv(sys.argv[1])
print(time.perf_counter() - started, table.num_rows)
"""


def measured(command: list[str], cwd: Path, log: Path) -> dict:
    "Run `command` in a fresh wrapper process: its wall time and peak RSS (MB) and its standard output."
    wrapper = ("import json, resource, subprocess, sys, time\n"
               "started = time.perf_counter()\n"
               "done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=sys.stderr, text=True)\n"
               "print(json.dumps({'rc': done.returncode, 'seconds': time.perf_counter() - started, 'stdout': done.stdout,\n"
               "                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "KEDRO_DISABLE_TELEMETRY": "true"}
    env.pop("LOOPLAB_PROJECT_ROOT", None)
    with log.open("a") as errors:
        done = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"bench-data: {' '.join(command)} failed (exit {result['rc']}); see {log}")
    return result


def stream(megabytes: float, work: Path, seed: int = 0) -> dict:
    "The big-file figures: anchor, first run, run with nothing new."
    from bigfile import write_big_csv

    project = copy_project(work / "project")
    landing = project / "data" / "01_raw" / "landing" / "rides_big.csv"
    tick = time.perf_counter()
    written = write_big_csv(landing, megabytes, seed)
    say(f"[stream] wrote {landing.name}: {written['rows']:,} rows, {written['bytes'] / 1e6:.0f} MB in {time.perf_counter() - tick:.0f} s")
    log = work / "stream.log"
    anchor = measured([sys.executable, "-c", ANCHOR, str(landing)], project, log)
    seconds, rows = anchor["stdout"].split()
    anchor = {"seconds": float(seconds), "rows": int(rows), "peak_rss_mb": anchor["peak_rss_mb"], "process_seconds": anchor["seconds"]}
    say(f"[stream] pyarrow.csv.read_csv alone: {anchor['seconds']:.1f} s, peak RSS {anchor['peak_rss_mb']:.0f} MB")
    kedro = [str(Path(sys.executable).with_name("kedro")), "run", "-p", "data"]
    first = measured(kedro, project, log)
    say(f"[stream] kedro run -p data, taking it: {first['seconds']:.1f} s, peak RSS {first['peak_rss_mb']:.0f} MB")
    again = measured(kedro, project, log)
    say(f"[stream] kedro run -p data, nothing new: {again['seconds']:.1f} s, peak RSS {again['peak_rss_mb']:.0f} MB")
    split = measured([sys.executable, "-c", SPLIT], project, log)  # once more, in one process: Kedro's start-up apart from the pipeline
    split = json.loads(split["stdout"].strip().splitlines()[-1])
    say(f"[stream] nothing new, in one process: start-up {split['startup_seconds']:.1f} s, the data pipeline {split['pipeline_seconds']:.1f} s")
    result = {
        "file": {"rows": written["rows"], "bytes": written["bytes"]},
        "anchor_pyarrow": anchor,
        "data_run": {key: first[key] for key in ("seconds", "peak_rss_mb")},
        "noop_run": {**{key: again[key] for key in ("seconds", "peak_rss_mb")}, "in_process": split},
        "targets": {"peak_rss_mb_max": PEAK_RSS_MB_MAX, "noop_seconds_max": NOOP_SECONDS_MAX},
    }
    result["ratios"] = {"time_over_anchor": first["seconds"] / anchor["seconds"], "peak_rss_over_anchor": first["peak_rss_mb"] / anchor["peak_rss_mb"]}
    result["met"] = {"peak_rss": first["peak_rss_mb"] <= PEAK_RSS_MB_MAX, "noop_seconds": again["seconds"] <= NOOP_SECONDS_MAX}
    return result


def summary(result: dict) -> str:
    "One part of the summary line."
    mb = result["file"]["bytes"] / 1e6
    anchor, first, again, met = result["anchor_pyarrow"], result["data_run"], result["noop_run"], result["met"]
    return (f"{mb:.0f} MB CSV: data run {first['seconds']:.0f} s, {first['peak_rss_mb']:.0f} MB "
            f"(pyarrow alone {anchor['seconds']:.1f} s, {anchor['peak_rss_mb']:.0f} MB; RSS target ≤ {PEAK_RSS_MB_MAX} MB "
            f"{'met' if met['peak_rss'] else 'MISSED'}) · nothing new {again['seconds']:.1f} s (target ≤ {NOOP_SECONDS_MAX:.0f} s "
            f"{'met' if met['noop_seconds'] else 'MISSED'}{pipeline_part(again)})")


def pipeline_part(noop: dict) -> str:
    "The in-process split of a run with nothing new, when it was measured."
    split = noop.get("in_process")
    return f"; of which Kedro start-up {split['startup_seconds']:.1f} s, the pipeline {split['pipeline_seconds']:.1f} s" if split else ""

