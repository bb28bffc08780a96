"""The logs benchmark: `looplab logs` filtering a week of JSON logs, 1M lines, against `grep -c` on the same files.

A project copy (its pyproject.toml and conf) gets LINES lines (default 1,000,000) of logs spread over the
seven days before now, as the processes write them: the serving workers' `serving.jsonl` (one line per
predict request, with its request id, model and status; most lines), the gateway's JSON access log with
the same request ids (nginx's own line format), and the replay's and Kedro's records; 2 % warnings,
0.5 % errors. The JSON lines are made by looplab's own formatter (`looplab.logs.JsonLines`) for a few
records per component and repeated with new times and ids, so every byte has the shape a process writes.
The files are rotated as the handler rotates them (`serving.jsonl`, `serving.jsonl.1`, … at
`logs.max_bytes`, 10 MB), with `logs.backups` raised in the copy's conf so the whole week is kept; each
file's modification time is its last line's (what a rotated file has on disk: `--since` skips the older ones).

Timed, each REPS times (median), after one untimed run that warms the page cache:
  * `looplab logs --request-id ID --json` as a user runs it (a new process: Python's start-up and the
    import of the command included), and `read_logs` in this process;
  * `looplab logs --level warning --component serving --since 1d --json` likewise;
  * the anchor: `grep -c ID` over the same files (GNU grep, a fixed string: -F).
Target: each `looplab logs` command ≤ 2 s on 1M lines.

    .venv/bin/python benchmarks/logs/run.py                         # 1M lines, 3 repetitions
    .venv/bin/python benchmarks/logs/run.py --lines 100000 -r 1 --out /tmp/logs.json

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
from common import machine, say, write_result  # noqa: E402

from looplab.core import copy_project_files  # noqa: E402
from looplab.logs import JsonLines, LogQuery, log_context, log_files, parse_since, read_logs  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "logs.json"
BIN = Path(sys.executable).parent
TARGET_S = 2.0
MAX_BYTES = 10_000_000


def template(component: str, logger: str, level: int, message: str, context: dict, extra: dict) -> dict:
    "One record as `JsonLines` writes it, parsed back: the shape every generated line of this kind has."
    record = logging.LogRecord(logger, level, "benchmark", 1, message, (), None)
    record.__dict__.update(extra)
    with log_context(**context):
        return orjson.loads(JsonLines(component, "local").format(record))


def write_week(folder: Path, access: Path, lines: int, seed: int = 7) -> tuple[str, int]:
    "LINES lines over the last seven days into `folder` (rotated files) and the access log; (a request id that is in it, bytes written)."
    rng = random.Random(seed)
    now = datetime.now(UTC)
    start = now - timedelta(days=7)
    step = timedelta(days=7) / (lines / 1.93)  # 93 % of the steps write two lines (the worker's and the gateway's)
    kinds = {
        "serving": template("serving", "looplab.serving.requests", logging.INFO, "POST /v1/models/bike-demand/predict 200 in 2.1 ms",
                            {"request_id": "x", "model_name": "bike-demand", "model_version": "3", "rows": 1},
                            {"status": 200, "latency_ms": 2.1}),
        "replay": template("replay", "looplab.retraining", logging.INFO, "retraining: not now (cooldown)",
                           {}, {"decision_id": "d", "model_name": "bike-demand", "model_version": "3", "decision_run_id": "r"}),
        "kedro": template("kedro", "kedro.runner.sequential_runner", logging.INFO, "Completed 3 out of 9 tasks", {}, {}),
    }
    files = {name: None for name in kinds}
    sizes = {name: 0 for name in kinds}
    rotations = {name: 0 for name in kinds}
    written = 0
    wanted, wanted_at = None, lines // 2
    access_handle = access.open("wb")
    buffers: dict[str, list[bytes]] = {name: [] for name in kinds}

    def flush(name: str) -> None:
        nonlocal written
        data = b"".join(buffers[name])
        buffers[name].clear()
        if files[name] is None:
            files[name] = (folder / f"{name}.jsonl").open("wb")
        if sizes[name] + len(data) >= MAX_BYTES:  # rotate as the handler does: the current file becomes .1, the others move up
            files[name].close()
            rotations[name] += 1
            for number in range(rotations[name], 0, -1):
                source = folder / (f"{name}.jsonl.{number - 1}" if number > 1 else f"{name}.jsonl")
                source.rename(folder / f"{name}.jsonl.{number}")
            files[name] = (folder / f"{name}.jsonl").open("wb")
            sizes[name] = 0
        files[name].write(data)
        sizes[name] += len(data)
        written += len(data)

    count = 0
    moment = start
    while count < lines:
        moment += step
        stamp = moment.isoformat(timespec="milliseconds")
        draw = rng.random()
        name = "serving" if draw < 0.93 else "replay" if draw < 0.97 else "kedro"
        record = dict(kinds[name], time=stamp)
        level = rng.random()
        if level < 0.005:
            record.update(level="ERROR", message="the predict route failed on a request of 180 bytes")
        elif level < 0.025:
            record.update(level="WARNING", message="POST /v1/models/bike-demand/predict 422 in 0.9 ms", status=422)
        if name == "serving":
            record["request_id"] = uuid.UUID(int=rng.getrandbits(128)).hex
            if count >= wanted_at and wanted is None:
                wanted = record["request_id"]
            access_entry = {"time": moment.strftime("%Y-%m-%dT%H:%M:%S+00:00"), "request_id": record["request_id"], "client": "127.0.0.1",
                            "method": "POST", "uri": "/v1/models/bike-demand/predict", "status": record.get("status", 200),
                            "bytes_sent": 90, "request_time": 0.003, "variant": "champion", "upstream_addr": "127.0.0.1:8000",
                            "upstream_status": str(record.get("status", 200)), "upstream_response_time": "0.003"}
            line = orjson.dumps(access_entry) + b"\n"
            access_handle.write(line)
            written += len(line)
            count += 1
        buffers[name].append(orjson.dumps(record) + b"\n")
        count += 1
        if len(buffers[name]) >= 2000:
            flush(name)
    for name in kinds:
        if buffers[name]:
            flush(name)
        if files[name] is not None:
            files[name].close()
    access_handle.close()
    for path in [*folder.iterdir(), access]:  # each file last changed when its last line was written, as on a real disk
        last = orjson.loads(path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1])["time"]
        stamp = datetime.fromisoformat(last).timestamp()
        os.utime(path, (stamp, stamp))
    return wanted, written


def timed(action, repetitions: int) -> tuple[float, object]:
    "Median seconds of `action` over `repetitions` runs after one untimed warm-up; and its last result."
    result = action()
    times = []
    for _ in range(repetitions):
        began = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    grep = shutil.which("grep")
    work = Path(tempfile.mkdtemp(prefix="looplab-bench-logs-"))
    try:
        project = copy_project_files(ROOT, work / "project", only=("pyproject.toml", "conf"))
        (project / "conf" / "local").mkdir(exist_ok=True)
        backups = args.lines * 400 // MAX_BYTES + 10  # the whole week kept (the default keeps 5 files a component)
        (project / "conf" / "local" / "logs.yml").write_text(f"logs:\n  max_bytes: {MAX_BYTES}\n  backups: {backups}\n")
        run_dir = project / "data" / "06_models" / "gateway" / "logs"
        folder = project / "data" / "08_reporting" / "logs"
        run_dir.mkdir(parents=True)
        folder.mkdir(parents=True)
        say(f"writing {args.lines:,} log lines over seven days into {folder} and {run_dir / 'access.log'} …")
        began = time.perf_counter()
        request_id, size = write_week(folder, run_dir / "access.log", args.lines)
        say(f"  {size / 1e6:.0f} MB in {time.perf_counter() - began:.1f} s")
        files = log_files(project)
        lines = sum(file.read_bytes().count(b"\n") for file in files)
        say(f"  {lines:,} lines in {len(files)} files")

        def command(*options: str):
            def run():
                result = subprocess.run([str(BIN / "looplab"), "logs", "--json", *options], cwd=project, capture_output=True, timeout=600)
                assert result.returncode == 0, result.stderr.decode()[-2000:]
                # the lines of the log files; with --request-id the command also reports the request's prediction-log rows
                return sum(b'"component":"prediction-log"' not in line for line in result.stdout.splitlines())
            return run

        filters = {"request_id": ["--request-id", request_id],
                   "level_component_since": ["--level", "warning", "--component", "serving", "--since", "1d"]}
        queries = {"request_id": LogQuery(request_id=request_id),
                   "level_component_since": LogQuery(since=parse_since("1d"), level="warning", component="serving")}
        figures = {}
        for name, options in filters.items():
            say(f"looplab logs {' '.join(options)} …")
            command_s, matched = timed(command(*options), args.repetitions)
            library_s, found = timed(lambda query=queries[name]: read_logs(log_files(project), query), args.repetitions)
            assert matched == len(found), (matched, len(found))
            figures[name] = {"options": " ".join(options), "matches": matched, "command_s": round(command_s, 3),
                             "read_logs_s": round(library_s, 3), "target_s": TARGET_S, "met": command_s <= TARGET_S}
            say(f"  {matched} match(es): the command {command_s:.2f} s, read_logs {library_s:.2f} s")
        assert figures["request_id"]["matches"] == 2, figures  # the gateway's line and the worker's

        say(f"anchor: grep -cF {request_id} over the same files …")
        grep_s, counted = timed(lambda: subprocess.run([grep, "-cF", request_id, *map(str, files)], capture_output=True, timeout=600).stdout,
                                args.repetitions)
        grep_matches = sum(int(line.rsplit(b":", 1)[-1]) for line in counted.splitlines())
        assert grep_matches == 2, counted
        ratio = figures["request_id"]["command_s"] / grep_s
        met = all(figure["met"] for figure in figures.values())
        summary = (f"logs: {lines:,} lines ({size / 1e6:.0f} MB, {len(files)} files): looplab logs --request-id "
                   f"{figures['request_id']['command_s']:.2f} s vs grep -c {grep_s:.2f} s ({ratio:.1f}x); "
                   f"--level warning --component serving --since 1d {figures['level_component_since']['command_s']:.2f} s "
                   f"({figures['level_component_since']['matches']:,} matches); target <= {TARGET_S:g} s: {'met' if met else 'MISSED'}")
        result = {
            "benchmark": "logs", "time": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(("python-json-logger", "orjson")),
            "lines": lines, "bytes": size, "files": len(files), "repetitions": args.repetitions, "filters": figures,
            "anchor": {"command": f"grep -cF ID ({len(files)} files)", "seconds": round(grep_s, 3), "matches": grep_matches},
            "ratio_request_id_to_grep": round(ratio, 2), "target_met": met, "summary": summary,
        }
        return write_result(result, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
