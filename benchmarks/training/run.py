"""The training benchmark: one training run three ways — direct calls, `kedro run -p training`, papermill.

Set-up (not timed): a temporary copy of the project (pyproject, kedro.yml, conf, src, the raw
demo data) and `kedro run -p data` in it. Then, for the same parameters, R repetitions of each
variant, interleaved (the order rotates every repetition) so machine noise spreads over all three:

- direct: a fresh `python -c` process that loads the parameters and the two inputs (`features`,
  `data_versions`) through the catalog and calls `train_evaluate_register` (train → evaluate →
  register, the one training path); it also reports the in-process time of that call alone;
- kedro: `kedro run -p training`;
- papermill: `papermill notebooks/runs/train.ipynb OUT -k looplab`, whose output notebook gives
  the kernel start-up and every cell's time.

The anchor is the direct process, measured in the same run: overhead = median(variant) −
median(direct). Target: papermill's overhead ≤ 3 s. One untimed warm-up round goes first, so every
timed run finds a champion to compare with (and warm file caches). Each run registers a new model
version in the temporary store.

    .venv/bin/python benchmarks/training/run.py                       # demo data, 3 repetitions
    .venv/bin/python benchmarks/training/run.py --env test -r 1 --warmup 0 --out /tmp/training.json

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
from common import copy_project, machine, say, write_result  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "runs" / "train.ipynb"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "training.json"
BIN = Path(sys.executable).parent
VARIANTS = ("direct", "kedro", "papermill")
PAPERMILL_OVERHEAD_MAX_S = 3.0
TIMEOUT_S = 900

# The direct variant: what a script calling the library does, in a fresh interpreter.
# argv: result path, config environment ("" for the default).
DIRECT = """\
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from kedro.io import DataCatalog
from looplab.core import load_config
from looplab.training import train_evaluate_register
imported = time.perf_counter()
root, env = Path.cwd(), sys.argv[2] or None
parameters = load_config("parameters", env=env, root=root)
data, training, evaluation = parameters["data"], parameters["training"], parameters["evaluation"]
catalog = DataCatalog.from_config(load_config("catalog", env=env, root=root))
features, data_versions = catalog.load("features"), catalog.load("data_versions")
loaded = time.perf_counter()
trained = train_evaluate_register(features, data_versions, data, training, evaluation, root=root, env=env)
registered = time.perf_counter()
train_set, evaluation_set, report, registration = (trained[key] for key in ("train_set", "evaluation_set", "evaluation", "registration"))
Path(sys.argv[1]).write_text(json.dumps({
    "imports_s": imported - started, "inputs_s": loaded - imported, "calls_s": registered - loaded,
    "in_process_s": registered - started, "train_rows": len(train_set), "evaluation_rows": len(evaluation_set),
    "version": registration["version"], "gate_passed": bool(report["gate"]["passed"]),
}))
"""

# The papermill notebook's cells, by what they do (first match of a marker in the cell's source).
CELL_GROUPS = (
    ("parameters", ("# Parameters", "window_start: str")),
    ("lab_record", ("log_executed_notebook",)),
    ("train_evaluate_register", ("train_evaluate_register(",)),
    ("kedro_session", ("KedroSession.create(",)),
    ("setup", ("load_config(",)),
)
DISPLAY_GROUP = "tables_plots_report"


def median(values: list[float]) -> float:
    return statistics.median(values)


def child_env() -> dict[str, str]:
    "The environment of every timed process: no telemetry, no project root or Kedro env inherited."
    env = {key: value for key, value in os.environ.items() if key not in ("LOOPLAB_PROJECT_ROOT", "KEDRO_ENV")}
    return {**env, "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def timed(command: list[str], cwd: Path, log: Path) -> dict:
    "Run `command`; its wall time and the CPU time (user + system) of it and every process it waited for."
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as output:
        completed = subprocess.run(command, cwd=cwd, env=child_env(), stdout=output, stderr=subprocess.STDOUT,
                                   timeout=TIMEOUT_S, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        raise SystemExit(f"bench-training: {' '.join(command)} failed (exit {completed.returncode}); "
                         f"the end of its output ({log}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


# --- the three variants ------------------------------------------------------------------------

def run_direct(project: Path, work: Path, env: str | None, tag: str) -> dict:
    result = work / f"direct-{tag}.json"
    run = timed([sys.executable, "-c", DIRECT, str(result), env or ""], project, work / f"direct-{tag}.log")
    inside = json.loads(result.read_text(encoding="utf-8"))
    run["in_process"] = inside
    run["interpreter_and_exit_s"] = run["wall_s"] - inside["in_process_s"]
    return run


def run_kedro(project: Path, work: Path, env: str | None, tag: str) -> dict:
    command = [str(BIN / "kedro"), "run", "-p", "training", *(["--env", env] if env else [])]
    return timed(command, project, work / f"kedro-{tag}.log")


def run_papermill(project: Path, work: Path, env: str | None, tag: str) -> dict:
    output = work / f"train-{tag}.ipynb"
    command = [str(BIN / "papermill"), str(NOTEBOOK), str(output), "-k", "looplab", "--no-progress-bar",
               "-p", "register", "True", *(["-p", "env", env] if env else [])]  # registers, as the other two do
    run = timed(command, project, work / f"papermill-{tag}.log")
    run["breakdown"] = papermill_breakdown(json.loads(output.read_text(encoding="utf-8")), run["wall_s"])
    return run


RUNNERS = {"direct": run_direct, "kedro": run_kedro, "papermill": run_papermill}


def cell_group(cell: dict) -> str:
    source = "".join(cell.get("source", ""))
    tags = cell.get("metadata", {}).get("tags", [])
    if "parameters" in tags or "injected-parameters" in tags:
        return "parameters"
    return next((group for group, markers in CELL_GROUPS if any(marker in source for marker in markers)), DISPLAY_GROUP)


def papermill_breakdown(notebook: dict, wall: float) -> dict:
    "Where a papermill run's wall time went, from the timestamps papermill writes into the output notebook."
    stamp = datetime.fromisoformat
    meta = notebook["metadata"]["papermill"]
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code" and cell["metadata"].get("papermill", {}).get("start_time")]
    groups: dict[str, float] = {}
    for cell in cells:
        group = cell_group(cell)
        groups[group] = groups.get(group, 0.0) + float(cell["metadata"]["papermill"]["duration"])
    starts = [stamp(cell["metadata"]["papermill"]["start_time"]) for cell in cells]
    ends = [stamp(cell["metadata"]["papermill"]["end_time"]) for cell in cells]
    notebook_s = float(meta["duration"])
    kernel_start = (starts[0] - stamp(meta["start_time"])).total_seconds()
    after_last = (stamp(meta["end_time"]) - ends[-1]).total_seconds()
    between = sum((start - end).total_seconds() for start, end in zip(starts[1:], ends[:-1], strict=True))
    return {
        "papermill_process_outside_notebook_s": wall - notebook_s,  # interpreter, `import papermill`, reading/writing
        "notebook_s": notebook_s,
        "kernel_start_s": kernel_start,
        "between_cells_s": between,                                # papermill saves the output after every cell
        "kernel_shutdown_s": after_last,
        "cells_s": {group: groups.get(group, 0.0) for group in
                    ("parameters", "setup", "kedro_session", "train_evaluate_register", DISPLAY_GROUP, "lab_record")},
        "code_cells": len(cells),
    }


# --- summary -----------------------------------------------------------------------------------

def median_of(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    return median(values)


def attribution(direct: list[dict], papermill: list[dict]) -> dict:
    "Papermill's overhead over the direct process, part by part: medians of papermill's parts minus the direct equivalents (seconds)."
    def pm(*groups: str, key: str | None = None) -> float:
        if key:
            return median([run["breakdown"][key] for run in papermill])
        return median([sum(run["breakdown"]["cells_s"][group] for group in groups) for run in papermill])

    def dp(*keys: str) -> float:
        return median([sum(run["in_process"][key] for key in keys) for run in direct])

    parts = {
        "papermill_process_outside_notebook_s": pm(key="papermill_process_outside_notebook_s"),
        "kernel_start_s": pm(key="kernel_start_s"),
        "between_cells_s": pm(key="between_cells_s"),
        "kernel_shutdown_minus_direct_exit_s": pm(key="kernel_shutdown_s") - median([run["interpreter_and_exit_s"] for run in direct]),
        "imports_parameters_inputs_cells_minus_direct_s": pm("parameters", "setup", "kedro_session") - dp("imports_s", "inputs_s"),
        "train_evaluate_register_cells_minus_direct_calls_s": pm("train_evaluate_register") - dp("calls_s"),
        "tables_plots_report_cells_s": pm(DISPLAY_GROUP),
        "lab_record_cell_s": pm("lab_record"),
    }
    return {**parts, "sum_s": sum(parts.values())}


def summarise(runs: dict[str, list[dict]]) -> dict:
    walls = {variant: [run["wall_s"] for run in runs[variant]] for variant in VARIANTS}
    medians = {variant: median(values) for variant, values in walls.items()}
    variants = {}
    for variant in VARIANTS:
        variants[variant] = {
            "repetitions": runs[variant],
            "median_wall_s": medians[variant],
            "median_cpu_s": median([run["cpu_s"] for run in runs[variant]]),
            "min_wall_s": min(walls[variant]), "max_wall_s": max(walls[variant]),
        }
    variants["direct"]["median_calls_s"] = median_of(runs["direct"], "in_process", "calls_s")
    variants["direct"]["median_in_process"] = {key: median_of(runs["direct"], "in_process", key) for key in
                                               ("imports_s", "inputs_s", "calls_s", "in_process_s")}
    variants["papermill"]["median_breakdown"] = {
        **{key: median_of(runs["papermill"], "breakdown", key) for key in
           ("papermill_process_outside_notebook_s", "notebook_s", "kernel_start_s", "between_cells_s", "kernel_shutdown_s")},
        "cells_s": {group: median_of(runs["papermill"], "breakdown", "cells_s", group)
                    for group in runs["papermill"][0]["breakdown"]["cells_s"]},
    }
    overheads = {variant: {
        "seconds": medians[variant] - medians["direct"],
        "ratio": medians[variant] / medians["direct"],
        "paired_median_s": median([run["wall_s"] - anchor["wall_s"] for run, anchor in zip(runs[variant], runs["direct"], strict=True)]),
    } for variant in ("kedro", "papermill")}
    # The same comparison without the library call, whose run-to-run spread both variants share.
    overheads["papermill"]["excluding_library_calls_s"] = (
        median([run["wall_s"] - run["breakdown"]["cells_s"]["train_evaluate_register"] for run in runs["papermill"]])
        - median([run["wall_s"] - run["in_process"]["calls_s"] for run in runs["direct"]]))
    met = overheads["papermill"]["seconds"] <= PAPERMILL_OVERHEAD_MAX_S
    return {
        "variants": variants,
        "overheads": overheads,
        "papermill_overhead_attribution": attribution(runs["direct"], runs["papermill"]),
        "target": {"papermill_overhead_s_max": PAPERMILL_OVERHEAD_MAX_S,
                   "rule": "median(papermill wall) − median(direct wall) ≤ 3 s, both measured in this run"},
        "met": {"papermill_overhead": met},
    }


def summary_line(result: dict) -> str:
    variants, overheads = result["variants"], result["overheads"]
    direct = variants["direct"]
    kedro, papermill = overheads["kedro"]["seconds"], overheads["papermill"]["seconds"]
    target = result["target"]["papermill_overhead_s_max"]
    return (f"training ({result['settings']['data']}): direct {direct['median_wall_s']:.1f} s (calls {direct['median_calls_s']:.1f} s) · "
            f"kedro {variants['kedro']['median_wall_s']:.1f} s ({kedro:+.1f} s) · "
            f"papermill {variants['papermill']['median_wall_s']:.1f} s ({papermill:+.1f} s, target ≤ {target:.0f} s: "
            f"{'met' if result['met']['papermill_overhead'] else 'not met'}) · median of {result['settings']['repetitions']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-r", "--repetitions", type=int, default=3, help="timed runs of each variant (default 3; medians reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of all three first (default 1)")
    parser.add_argument("--env", default=None,
                        help="Kedro config environment (default: none, i.e. base + local: the demo's Jan–Feb + 14 landing days; "
                             "`test`: three weeks, for a quick run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON result goes")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary project goes (default: the system's temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project, logs and output notebooks")
    args = parser.parse_args(argv)
    if args.repetitions < 1 or args.warmup < 0:
        parser.error("--repetitions must be ≥ 1 and --warmup ≥ 0")

    data_label = f"env {args.env}" if args.env else "demo data, env local"
    info = machine(("kedro", "papermill", "nbclient", "ipykernel", "jupyter_client", "mlflow", "scikit-learn", "feast", "pandas"))
    temp = Path(tempfile.mkdtemp(prefix="looplab-bench-training-", dir=args.workdir))
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    try:
        project, work = copy_project(temp / "project"), temp / "work"
        work.mkdir()
        say(f"[setup] project copy in {project}; kedro run -p data ({data_label})")
        setup = timed([str(BIN / "kedro"), "run", "-p", "data", *(["--env", args.env] if args.env else [])], project, work / "data.log")
        say(f"[setup] data pipeline {setup['wall_s']:.1f} s")
        for round_ in range(args.warmup):
            for variant in VARIANTS:
                say(f"[warm-up {round_ + 1}/{args.warmup}] {variant}")
                RUNNERS[variant](project, work, args.env, f"warmup{round_}")
        for repetition in range(args.repetitions):
            order = VARIANTS[repetition % 3:] + VARIANTS[:repetition % 3]  # interleaved: each variant leads once in three
            for variant in order:
                run = RUNNERS[variant](project, work, args.env, f"r{repetition}")
                run["position"] = order.index(variant)
                runs[variant].append(run)
                say(f"[{repetition + 1}/{args.repetitions}] {variant}: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU")
        first = runs["direct"][0]["in_process"]
    finally:
        if not args.keep:
            shutil.rmtree(temp, ignore_errors=True)
        else:
            say(f"kept {temp}")

    result = {"benchmark": "training", "machine": info, **summarise(runs),
              "settings": {"env": args.env or "local", "data": data_label, "repetitions": args.repetitions, "warmup_rounds": args.warmup,
                           "order": "rotated every repetition", "train_rows": first["train_rows"],
                           "evaluation_rows": first["evaluation_rows"], "notebook": str(NOTEBOOK.relative_to(ROOT)),
                           "setup_data_pipeline_s": setup["wall_s"],
                           "commands": {"direct": "python -c <load params + catalog inputs; train_model → evaluate_model → register_model>",
                                        "kedro": "kedro run -p training" + (f" --env {args.env}" if args.env else ""),
                                        "papermill": "papermill notebooks/runs/train.ipynb OUT -k looplab" + (f" -p env {args.env}" if args.env else "")}},
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["summary"] = summary_line(result)
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
