"""The monitoring benchmark: a drift check of a 100k-row window over every feature, on both backends; and replay throughput.

Drift (in this process). The reference is what a model version stores: `monitoring.drift.reference_rows`
rows sampled from the demo's training window (January–February 2011, real bike features), with a
stand-in prediction column. The window is ROWS rows (default 100,000) drawn with replacement from
the whole year of real feature rows, so it drifts (spring and summer are in it). Each backend
checks the same window R times (default 3) after one untimed warm-up check (which builds the
backend: alibi-detect's import, about two seconds, is reported apart as `first_check_s`); the
figure is the median. The anchor, measured in the same run, is the bare work: `scipy.stats.ks_2samp`
and `chi2_contingency` called directly on prepared arrays, one per feature — the ratio
backend / anchor is what the detector's own handling (column checks, category codes, missing values,
correction, result table) costs. Target: ≤ 1 s per check on each backend.

Replay throughput (simulated days per second) — the slot `replay_throughput`: when the installed
looplab has `looplab.replay`, a project copy is set up as `make run` does (`kedro run -c kedro.yml`:
the whole loop once, not timed) and `looplab replay --start START --end END --step 1d --no-progress`
is timed on it (default: the 14 days after the demo's landing days, 2011-03-15 … 2011-03-28);
otherwise the result records "not available".

    .venv/bin/python benchmarks/monitoring/run.py                     # 100k rows, 3 repetitions, replay of 14 days
    .venv/bin/python benchmarks/monitoring/run.py --rows 20000 -r 1 --no-replay --out /tmp/monitoring.json

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
from common import copy_project, machine, say, write_result  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "monitoring.json"
BIN = Path(sys.executable).parent
BACKENDS = ("alibi", "scipy")
DRIFT_CHECK_MAX_S = 1.0
TIMEOUT_S = 1800


def bike_features() -> tuple[pd.DataFrame, dict]:
    "The real feature rows of 2011 (the data layer's feature code on data/01_raw/Bikeshare.csv) and the parameters."
    from looplab.core import load_config
    from looplab.features import build_features
    from looplab.sources import demo_rides

    with tempfile.TemporaryDirectory() as work:  # a fresh clone's files: nothing a run of the checkout left behind
        project = copy_project(Path(work) / "project")
        parameters = load_config("parameters", root=project)
        rides = demo_rides(parameters["data"], root=project).assign(region="dc", _source="demo", _batch_id="demo")
    return build_features(rides, parameters["data"]), parameters


def drift_inputs(rows: int, seed: int) -> dict:
    "Reference, window, features and categories as a registered model version would have them."
    from looplab.drift import PREDICTION, categorical_features, check_settings, sample_reference

    bike, parameters = bike_features()
    training, settings = parameters["training"], check_settings(parameters["monitoring"]["drift"])
    stand_in = {PREDICTION: lambda frame: frame["bikers_mean_same_hour_7d"].fillna(frame["bikers"]).astype(float)}
    window_start, window_end = pd.Timestamp(training["window"]["start"]), pd.Timestamp(training["window"]["end"])
    training_rows = bike[(bike["event_timestamp"] >= window_start) & (bike["event_timestamp"] < window_end)]
    reference = sample_reference(training_rows, settings["reference_rows"], seed=seed).assign(**stand_in)
    window = bike.iloc[np.random.default_rng(seed).integers(0, len(bike), size=rows)].reset_index(drop=True).assign(**stand_in)
    features = [*training["features"], PREDICTION]
    categorical = categorical_features(reference, features, training["categorical"], settings["max_categories"])
    return {"reference": reference, "window": window, "features": features, "categorical": categorical, "settings": settings}


def anchor_check(inputs: dict) -> float:
    "The bare tests on prepared arrays (codes for categories): the least any backend has to do. Seconds."
    from scipy.stats import chi2_contingency, ks_2samp

    prepared = []
    for feature in inputs["features"]:
        reference, window = inputs["reference"][feature].dropna(), inputs["window"][feature].dropna()
        if feature in inputs["categorical"]:
            categories = pd.Index(sorted(set(reference.astype(str)) | set(window.astype(str))))
            reference = categories.get_indexer(reference.astype(str))
            window = categories.get_indexer(window.astype(str))
        prepared.append((feature in inputs["categorical"], np.asarray(reference), np.asarray(window)))
    started = time.perf_counter()
    for categorical, reference, window in prepared:
        if categorical:
            size = max(reference.max(), window.max()) + 1
            table = np.vstack([np.bincount(reference, minlength=size), np.bincount(window, minlength=size)])
            chi2_contingency(table[:, table.sum(axis=0) > 0])
        else:
            ks_2samp(reference, window, method="asymp")
    return time.perf_counter() - started


def drift_benchmark(rows: int, repetitions: int, seed: int) -> dict:
    "Median seconds of a drift check of `rows` rows on each backend, and the anchor's."
    from looplab.drift import make_detector

    say(f"drift: building the reference and a {rows:,}-row window from the real bike data")
    inputs = drift_inputs(rows, seed)
    settings = inputs["settings"]
    results = {"rows": rows, "reference_rows": len(inputs["reference"]), "features": len(inputs["features"]),
               "categorical": inputs["categorical"], "repetitions": repetitions, "backends": {}}
    anchors = []
    for backend in BACKENDS:
        detector = make_detector(inputs["reference"], inputs["features"], inputs["categorical"], backend=backend,
                                 p_value=settings["p_value"], correction=settings["correction"])
        started = time.perf_counter()
        first = detector.check(inputs["window"])
        first_s = time.perf_counter() - started
        times = []
        for repetition in range(repetitions):
            started = time.perf_counter()
            result = detector.check(inputs["window"])
            times.append(time.perf_counter() - started)
            anchors.append(anchor_check(inputs))
            say(f"drift [{repetition + 1}/{repetitions}] {backend}: {times[-1]:.3f} s")
        results["backends"][backend] = {
            "median_s": statistics.median(times), "times_s": times, "first_check_s": first_s,
            "rows_per_second": rows / statistics.median(times), "drift": bool(result.drift), "n_drifted": result.n_drifted,
            "same_as_first": bool(result.features["p_value"].equals(first.features["p_value"])),
        }
    results["anchor_median_s"] = statistics.median(anchors)
    for figures in results["backends"].values():
        figures["ratio_to_anchor"] = figures["median_s"] / results["anchor_median_s"]
    return results


# --- replay throughput: the slot for `looplab replay` ------------------------------------------

def child_env() -> dict[str, str]:
    "The environment of every timed process: no telemetry, no project root or Kedro env inherited."
    env = {key: value for key, value in os.environ.items() if key not in ("LOOPLAB_PROJECT_ROOT", "KEDRO_ENV")}
    return {**env, "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


class StepFailed(RuntimeError):
    "A command of the replay measurement failed; the message ends with the end of its output."


def run_step(command: list[str], cwd: Path, log: Path) -> float:
    "Run one command in the project copy; its wall time. `StepFailed` with the end of its output when it fails."
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as output:
        completed = subprocess.run(command, cwd=cwd, env={**child_env(), "LOOPLAB_PROJECT_ROOT": str(cwd)}, stdout=output, stderr=subprocess.STDOUT,
                                   timeout=TIMEOUT_S, check=False)
    if completed.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        raise StepFailed(f"{' '.join(Path(part).name if i == 0 else part for i, part in enumerate(command))} failed "
                         f"(exit {completed.returncode}); the end of its output:\n{tail}")
    return time.perf_counter() - started


def replay_throughput(start: str, end: str, work: Path, env: str | None) -> dict:
    """REPLAY SLOT — simulated days per second of `looplab replay` on a project copy.

    Returns {"status": "not available"} when the installed looplab has no `looplab.replay`, and
    {"status": "failed", "error": …} when set-up or the replay fails (the drift figures are kept)."""
    if importlib.util.find_spec("looplab.replay") is None:
        say("replay: looplab.replay is not available; recorded as such")
        return {"status": "not available", "reason": "looplab.replay is not installed"}
    try:
        return _replay_measurement(start, end, work, env)
    except StepFailed as error:
        say(f"replay: {str(error).splitlines()[0]}")
        return {"status": "failed", "start": start, "end": end, "error": str(error)[-3000:]}


def _replay_measurement(start: str, end: str, work: Path, env: str | None) -> dict:
    project = copy_project(work / "replay-project")
    env_args = ["--env", env] if env else []
    say("replay: set-up as make run (kedro run -c kedro.yml), not timed")
    setup_s = run_step([str(BIN / "kedro"), "run", "-c", "kedro.yml", *env_args], project, work / "setup.log")
    days = (pd.Timestamp(end) - pd.Timestamp(start)).days + 1
    say(f"replay: looplab replay --start {start} --end {end} --step 1d ({days} days)")
    log = work / "replay.log"
    seconds = run_step([str(BIN / "looplab"), "replay", "--start", start, "--end", end, "--step", "1d", "--no-progress", *env_args],
                       project, log)
    output = log.read_text(encoding="utf-8", errors="replace")
    reported = re.search(r"\(([\d.]+) days/s\)", output)
    return {"status": "measured", "start": start, "end": end, "days": days, "wall_s": seconds,
            "days_per_second": days / seconds, "days_per_second_reported": float(reported.group(1)) if reported else None,
            "setup_s": setup_s, "summary_lines": [line for line in output.splitlines() if line.startswith(("replay ", "  MAE", "  report"))]}


def summary_line(result: dict) -> str:
    drift = result["drift"]
    parts = [f"{backend} {figures['median_s']:.3f} s ({figures['ratio_to_anchor']:.2f}x anchor)" for backend, figures in drift["backends"].items()]
    replay = result["replay"]
    replay_text = f"replay {replay['days_per_second']:.2f} days/s" if replay.get("status") == "measured" else f"replay {replay['status']}"
    met = "met" if all(result["met"]["drift_check"].values()) else "NOT met"
    return (f"monitoring: drift check of {drift['rows'] // 1000}k rows x {drift['features']} features: {', '.join(parts)}; "
            f"target <= {DRIFT_CHECK_MAX_S:g} s {met}; {replay_text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the drift window")
    parser.add_argument("-r", "--repetitions", type=int, default=3, help="timed checks per backend (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay-start", default="2011-03-15", help="first replayed day (the demo has landed the days before)")
    parser.add_argument("--replay-end", default="2011-03-28", help="last replayed day (inclusive)")
    parser.add_argument("--no-replay", action="store_true", help="leave replay throughput out")
    parser.add_argument("--env", default=None, help="config environment of the replay's project copy")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary project copy goes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON result goes")
    args = parser.parse_args()
    if args.rows < 1 or args.repetitions < 1:
        parser.error("--rows and --repetitions must be positive")

    info = machine(("alibi-detect", "scipy", "numpy", "pandas"))
    drift = drift_benchmark(args.rows, args.repetitions, args.seed)
    work = Path(tempfile.mkdtemp(prefix="looplab-bench-monitoring-", dir=args.workdir))
    try:
        replay = {"status": "skipped", "reason": "--no-replay"} if args.no_replay else \
            replay_throughput(args.replay_start, args.replay_end, work, args.env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "monitoring", "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"), "machine": info,
        "drift": drift, "replay": replay,
        "targets": {"drift_check_max_s": DRIFT_CHECK_MAX_S},
        "met": {"drift_check": {backend: figures["median_s"] <= DRIFT_CHECK_MAX_S for backend, figures in drift["backends"].items()}},
    }
    result["summary"] = summary_line(result)
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
