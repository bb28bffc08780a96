"""The data-layer benchmark: ingestion → validation → features on the bike data scaled to millions of rows.

For each size, three fresh child processes: one writes the landing Parquet files (`scale.py`, timed
apart), one reads them with pyarrow alone (the anchor: the floor no validator can beat), the last
runs the library's own steps on them in chunks and reads its peak RSS with `getrusage`, so each
size's peak is its own. The report gives rows/s and peak RSS per size beside pyarrow's time, and
time(largest) / time(smallest); targets at the largest size: ≥ 300k rows/s, peak RSS ≤ 1.5 GB.

    .venv/bin/python benchmarks/data/run.py                      # 1M and 10M rows (several minutes)
    .venv/bin/python benchmarks/data/run.py --sizes 20000 100000 --out /tmp/data.json

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
from common import copy_project, machine, say, write_result  # noqa: E402
from stream import stream  # noqa: E402
from stream import summary as stream_summary  # noqa: E402

DEFAULT_SIZES = (1_000_000, 10_000_000)
DEFAULT_DASK_SIZES = (1_000_000,)   # the Dask row: the whole batch passes through the client (the Kedro path)
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data.json"
PEAK_RSS_MB_MAX = 1536             # at the largest size
ROWS_PER_SECOND_MIN = 300_000      # end to end, at the largest size
TIME_RATIO_PER_ROWS_RATIO = 1.2     # time(10M) / time(1M) ≤ 12: at most 20% worse than linear
STEPS = ("ingest", "validate", "store", "features")
DETAIL = ("ingest_hash", "ingest_read", "ingest_normalise", "features_read", "features_build", "features_write")
NOT_TIMED = {
    "generation": "writing the landing files (scale.py) runs in its own process; its time and peak RSS are under `generate`",
    "feast_materialisation": "materialize_features (feast apply + SQLite online store) is not in the timed path",
    "append_validated": "the whole-table upsert is replaced by one Parquet part per validated chunk (landing files hold whole regions, so keys do not cross chunks)",
    "mlflow": "validation reports are not logged to MLflow",
}


def peak_rss_mb() -> float:
    "This process's peak resident set so far, in MB (Linux reports KiB)."
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def short_rows(rows: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size:
            value = rows / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(rows)


def short_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k" if rate >= 1e3 else f"{rate:.0f}"


def short_mb(mb: float) -> str:
    return f"{mb / 1024:.1f}".removesuffix(".0") + " GB" if mb >= 1024 else f"{mb:.0f} MB"


# --- child: generate ---------------------------------------------------------------------------

def generate(rows: int, landing: Path, regions_per_file: int, bad_share: float, seed: int, label: str) -> dict:
    "Write the landing files for `rows` rows."
    from scale import base_year, write_landing_files

    started = time.perf_counter()
    year = base_year()
    files, written = 0, 0
    for path, count in write_landing_files(landing, rows, regions_per_file, seed, bad_share, year):
        files, written = files + 1, written + count
        say(f"[{label}] generate: {path.name} ({written:,}/{rows:,} rows)")
    return {"rows": written, "files": files, "seconds": time.perf_counter() - started,
            "bytes": sum(p.stat().st_size for p in landing.iterdir()), "peak_rss_mb": peak_rss_mb()}


# --- child: anchor ----------------------------------------------------------------------------

def anchor(landing: Path, label: str) -> dict:
    "The floor no validator can beat: the same landing files read with pyarrow alone, one at a time (as the pipeline takes them)."
    import pyarrow.parquet as pq

    started, rows = time.perf_counter(), 0
    for path in sorted(landing.glob("*.parquet")):
        rows += pq.read_table(path).num_rows
    seconds = time.perf_counter() - started
    say(f"[{label}] pyarrow.parquet.read_table alone: {seconds:.1f} s, {short_rate(rows / seconds)} rows/s")
    return {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds if seconds else None, "peak_rss_mb": peak_rss_mb()}


# --- child: pipeline ---------------------------------------------------------------------------

def bench_params(landing: Path, work: Path) -> dict:
    "The project's real `data` parameters (as a fresh clone has them), every path moved under `work`, the landing folder the only source."
    import copy

    from looplab.core import load_config

    params = copy.deepcopy(load_config(root=copy_project(work / "project"))["data"])
    for key in ("state_path", "ingested_path", "validated_path", "features_path", "feast_source_path",
                "feature_store_path", "versions_log"):
        params[key] = str(work / "store" / Path(params[key]).name)
    landing_settings = dict(params["sources"]["landing"])
    landing_settings.update(path=str(landing), patterns=["*.parquet"])
    params["sources"] = {"landing": landing_settings}
    params["demo"] = {**params.get("demo", {}), "enabled": False}
    return params


def pipeline(landing: Path, work: Path, entities_per_chunk: int, label: str) -> dict:
    "Ingest and validate file by file, store the valid chunks, build features entity group by entity group."
    import logging
    import warnings

    import pandas as pd
    import pyarrow.dataset as ds

    from looplab.features import build_features, feature_inputs
    from looplab.ingestion import (
        commit_watermarks,
        new_batch_id,
        normalise_batch,
        order_columns,
        state_store,
        uniform_column_types,
    )
    from looplab.sources import file_entry, make_source, newest_time
    from looplab.validation import build_schema, validate_batch

    logging.getLogger("looplab").setLevel(logging.WARNING)  # one INFO line per chunk is noise here
    warnings.simplefilter("ignore", FutureWarning)
    params = bench_params(landing, work)
    build_schema(params)  # imports pandera now, so its import is not charged to the first chunk
    time_column, entity = params["timestamp"], params["entity"]["column"]
    settings = params["features"]
    feature_columns = [entity, time_column, *feature_inputs(settings), params["target"]]
    validated_dir, quarantine_dir, features_dir = (work / name for name in ("validated", "quarantine", "features"))
    for folder in (validated_dir, quarantine_dir, features_dir):
        folder.mkdir(parents=True, exist_ok=True)
    rss_start = peak_rss_mb()

    seconds = dict.fromkeys(STEPS, 0.0)
    detail = dict.fromkeys(DETAIL, 0.0)
    raised = {"startup": rss_start, **dict.fromkeys(STEPS, 0.0)}  # how much each step pushed the peak up

    def charge(step: str, since: float, peak_before: float) -> None:
        seconds[step] += time.perf_counter() - since
        raised[step] += max(0.0, peak_rss_mb() - peak_before)
    counts = {"rows_in": 0, "rows_valid": 0, "rows_quarantined": 0, "feature_rows": 0}
    reasons: dict[str, int] = {}
    entities: set[str] = set()
    started = time.perf_counter()

    # Ingestion + validation, one landing file at a time: what ingest_sources and validate_batch do, chunked.
    store = state_store(params)
    source = make_source("landing", {"timestamp_column": time_column, **params["sources"]["landing"]})
    taken = store.taken_files("landing")
    batch_id = new_batch_id()
    files = [path for path in source.matching_files()]
    entries, watermarks = [], []
    for index, path in enumerate(files):
        tick, peak = time.perf_counter(), peak_rss_mb()
        entry = file_entry(path)  # FileSource.read's steps, one file at a time
        if entry in taken:
            continue
        split = time.perf_counter()
        detail["ingest_hash"] += split - tick
        frame = source.read_file(path)
        detail["ingest_read"] += time.perf_counter() - split
        split = time.perf_counter()
        watermarks.append(newest_time(frame[time_column]))
        batch = normalise_batch(frame, "landing", batch_id, params, time_column)
        batch = order_columns(uniform_column_types(batch), [time_column, entity])
        del frame
        entries.append(entry)
        detail["ingest_normalise"] += time.perf_counter() - split
        charge("ingest", tick, peak)

        tick, peak = time.perf_counter(), peak_rss_mb()
        validated, quarantine, report = validate_batch(batch, params)
        charge("validate", tick, peak)

        tick, peak = time.perf_counter(), peak_rss_mb()
        validated.to_parquet(validated_dir / f"part-{index:05d}.parquet", index=False)
        if len(quarantine):
            quarantine.to_parquet(quarantine_dir / f"part-{index:05d}.parquet", index=False)
        charge("store", tick, peak)

        counts["rows_in"] += report["rows_in"]
        counts["rows_valid"] += report["rows_valid"]
        counts["rows_quarantined"] += report["rows_quarantined"]
        for key, count in report["reasons"].items():
            reasons[key] = reasons.get(key, 0) + count
        entities.update(validated[entity].unique().tolist())
        say(f"[{label}] chunk {index + 1}/{len(files)}: {counts['rows_in']:,} rows in, "
            f"{counts['rows_quarantined']:,} quarantined · ingest {seconds['ingest']:.1f} s · "
            f"validate {seconds['validate']:.1f} s · peak RSS {short_mb(peak_rss_mb())}")
        del batch, validated, quarantine

    tick, peak = time.perf_counter(), peak_rss_mb()
    newest = max((w for w in watermarks if w is not None), key=pd.Timestamp, default=None)
    pending = {"batch_id": batch_id, "sources": {"landing": {
        "kind": "files", "rows": counts["rows_in"], "watermark": newest, "previous_watermark": None, "files": entries}}}
    commit_watermarks(pending, None, params)
    charge("store", tick, peak)
    if counts["rows_in"] != counts["rows_valid"] + counts["rows_quarantined"]:
        raise RuntimeError(f"rows lost in validation: {counts}")

    # Features, one group of entities at a time: lags look back within an entity only.
    dataset = ds.dataset(str(validated_dir), format="parquet")
    ordered = sorted(entities)
    groups = [ordered[i:i + entities_per_chunk] for i in range(0, len(ordered), entities_per_chunk)]
    for number, group in enumerate(groups):
        tick, peak = time.perf_counter(), peak_rss_mb()
        rides = dataset.to_table(columns=feature_columns, filter=ds.field(entity).isin(group)).to_pandas()
        split = time.perf_counter()
        features = build_features(rides, params)
        detail["features_build"] += time.perf_counter() - split
        detail["features_read"] += split - tick
        split = time.perf_counter()
        features.to_parquet(features_dir / f"part-{number:05d}.parquet", index=False)
        detail["features_write"] += time.perf_counter() - split
        counts["feature_rows"] += len(features)
        charge("features", tick, peak)
        say(f"[{label}] features {number + 1}/{len(groups)}: {counts['feature_rows']:,} rows · "
            f"{seconds['features']:.1f} s · peak RSS {short_mb(peak_rss_mb())}")
        del rides, features
    if counts["feature_rows"] != counts["rows_valid"]:
        raise RuntimeError(f"features have {counts['feature_rows']:,} rows for {counts['rows_valid']:,} valid rows")

    total = time.perf_counter() - started
    return {
        "rows": counts["rows_in"],
        "seconds": total,
        "rows_per_second": counts["rows_in"] / total if total else None,
        "peak_rss_mb": peak_rss_mb(),
        "steps": seconds,
        "detail": detail,
        "peak_rss_mb_raised_by": raised,
        "chunks": {"landing_files": len(files), "feature_groups": len(groups), "entities": len(entities),
                   "entities_per_feature_group": entities_per_chunk},
        **{key: value for key, value in counts.items() if key != "rows_in"},
        "reasons": dict(sorted(reasons.items(), key=lambda item: -item[1])),
    }


# --- child: pipeline on Dask -------------------------------------------------------------------

def pipeline_dask(landing: Path, work: Path, workers: int, partitions: int, label: str) -> dict:
    "The library's own steps with `data.engine: dask` on a LocalCluster of worker processes; this process is the client."
    import logging
    import warnings

    from distributed import Client, LocalCluster

    from looplab.ingestion import commit_watermarks
    from looplab.scale import features_on_engine, ingest_on_engine, validate_on_engine
    from looplab.validation import build_schema

    logging.getLogger("looplab").setLevel(logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", FutureWarning)
    params = bench_params(landing, work)
    params.update(engine="dask", dask={"partitions": partitions})
    build_schema(params)  # pandera's import is not charged to the first step
    say(f"[{label}] dask: starting a LocalCluster of {workers} worker processes")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="4GiB",
                      dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("looplab.validation") and __import__("pandera.pandas"))  # workers import before timing
        rss_start = peak_rss_mb()
        seconds, raised = {}, {"startup": rss_start}
        started = time.perf_counter()

        def step(name, function, *args):
            tick, peak = time.perf_counter(), peak_rss_mb()
            result = function(*args)
            seconds[name] = time.perf_counter() - tick
            raised[name] = max(0.0, peak_rss_mb() - peak)
            say(f"[{label}] dask {name}: {seconds[name]:.1f} s · client peak RSS {short_mb(peak_rss_mb())}")
            return result

        batch, pending = step("ingest", ingest_on_engine, None, params)
        validated, quarantine, report = step("validate", validate_on_engine, batch, params)
        del batch
        tick, peak = time.perf_counter(), peak_rss_mb()
        (work / "validated").mkdir(parents=True, exist_ok=True)
        validated.to_parquet(work / "validated" / "part-00000.parquet", index=False)
        if len(quarantine):
            (work / "quarantine").mkdir(parents=True, exist_ok=True)
            quarantine.to_parquet(work / "quarantine" / "part-00000.parquet", index=False)
        commit_watermarks(pending, None, params)
        seconds["store"], raised["store"] = time.perf_counter() - tick, max(0.0, peak_rss_mb() - peak)
        features = step("features", features_on_engine, validated, params)
        tick = time.perf_counter()
        features.to_parquet(work / "features.parquet", index=False)
        seconds["features"] += time.perf_counter() - tick
        total = time.perf_counter() - started
        workers_rss = client.run(peak_rss_mb)
    if len(features) != report["rows_valid"] or report["rows_in"] != report["rows_valid"] + report["rows_quarantined"]:
        raise RuntimeError(f"dask: rows lost: {report['rows_in']} in, {report['rows_valid']} valid, {len(features)} feature rows")
    return {
        "engine": "dask",
        "rows": report["rows_in"],
        "seconds": total,
        "rows_per_second": report["rows_in"] / total if total else None,
        "peak_rss_mb": peak_rss_mb(),
        "workers_peak_rss_mb": sorted(workers_rss.values()),
        "steps": seconds,
        "peak_rss_mb_raised_by": raised,
        "cluster": {"workers": workers, "threads_per_worker": 1, "processes": True, "partitions": partitions},
        "rows_valid": report["rows_valid"],
        "rows_quarantined": report["rows_quarantined"],
        "feature_rows": len(features),
    }


# --- parent ------------------------------------------------------------------------------------

def run_child(role: str, arguments: list[str], result: Path) -> dict:
    "Run this script as a fresh child process in `role`; its result is the JSON it writes to `result`."
    command = [sys.executable, str(Path(__file__).resolve()), role, *arguments, "--result", str(result)]
    outside = ("LOOPLAB_PROJECT_ROOT", "KEDRO_ENV")  # the child reads a clean copy of the project, nothing else
    env = {**{key: value for key, value in os.environ.items() if key not in outside}, "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(command, cwd=ROOT, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"bench-data: the {role} step failed (exit {completed.returncode}): {' '.join(command)}")
    return json.loads(result.read_text(encoding="utf-8"))


def assess(sizes: list[dict]) -> dict:
    "Targets and whether they are met: the anchor is the smallest size, the RSS limit applies to the largest."
    anchor, largest = sizes[0], sizes[-1]
    ratio = largest["seconds"] / anchor["seconds"] if len(sizes) > 1 and anchor["seconds"] else None
    rows_ratio = largest["rows"] / anchor["rows"] if len(sizes) > 1 else None
    ratio_max = TIME_RATIO_PER_ROWS_RATIO * rows_ratio if rows_ratio else None
    by_rows = {size["rows"]: size for size in sizes}
    ten_over_one = (by_rows[10_000_000]["seconds"] / by_rows[1_000_000]["seconds"]
                    if 10_000_000 in by_rows and 1_000_000 in by_rows else None)
    return {
        "anchor_rows": anchor["rows"],
        "ratio_time_10m_over_1m": ten_over_one,
        "time_ratio": {"anchor_rows": anchor["rows"], "rows": largest["rows"], "rows_ratio": rows_ratio, "value": ratio},
        "targets": {
            "rows_per_second_min": ROWS_PER_SECOND_MIN,
            "peak_rss_mb_max": PEAK_RSS_MB_MAX,
            "peak_rss_at_rows": largest["rows"],
            "time_ratio_max": ratio_max,
            "time_ratio_rule": f"time(largest) / time(anchor) ≤ {TIME_RATIO_PER_ROWS_RATIO} × rows ratio (12 for 10M over 1M)",
        },
        "met": {
            "rows_per_second": largest["rows_per_second"] >= ROWS_PER_SECOND_MIN,
            "peak_rss": largest["peak_rss_mb"] <= PEAK_RSS_MB_MAX,
            "time_ratio": None if ratio is None else ratio <= ratio_max,
        },
    }


def summary(result: dict) -> str:
    parts = [f"{short_rows(s['rows'])} {s['seconds']:.1f} s ({short_rate(s['rows_per_second'])} rows/s, {short_mb(s['peak_rss_mb'])}"
             + (f"; pyarrow alone {s['anchor_pyarrow']['seconds']:.1f} s" if s.get("anchor_pyarrow") else "") + ")"
             for s in result["sizes"]]
    for row in result.get("dask", []):
        parts.append(f"dask {short_rows(row['rows'])} {row['seconds']:.1f} s ({short_rate(row['rows_per_second'])} rows/s, "
                     f"client {short_mb(row['peak_rss_mb'])}; ×{row['time_ratio_over_pandas']:.2f} pandas time)")
    ratio, met, targets = result["time_ratio"], result["met"], result["targets"]
    if ratio["value"] is not None:
        parts.append(f"time ratio {ratio['value']:.1f} (target ≤ {targets['time_ratio_max']:.0f}"
                     f"{', met' if met['time_ratio'] else ', MISSED'})")
    parts.append(f"rows/s target ≥ {short_rate(targets['rows_per_second_min'])} at {short_rows(targets['peak_rss_at_rows'])} "
                 f"{'met' if met['rows_per_second'] else 'MISSED'}")
    parts.append(f"peak RSS target ≤ {short_mb(targets['peak_rss_mb_max'])} at {short_rows(targets['peak_rss_at_rows'])} "
                 f"{'met' if met['peak_rss'] else 'MISSED'}")
    if result.get("stream"):
        parts.append(stream_summary(result["stream"]))
    return "data: " + " · ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=("bench", "generate", "anchor", "pipeline", "pipeline-dask"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", type=lambda text: int(float(text)), default=list(DEFAULT_SIZES),
                        help="rows per run, smallest first is the anchor (default: 1000000 10000000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON result goes")
    parser.add_argument("--regions-per-file", type=int, default=50,
                        help="regions per landing file = rows per ingestion/validation chunk / 8,645 (default 50)")
    parser.add_argument("--entities-per-chunk", type=int, default=50, help="regions per feature-building chunk (default 50)")
    parser.add_argument("--bad-share", type=float, default=0.001, help="share of rows corrupted on purpose (default 0.001)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dask-sizes", nargs="*", type=lambda text: int(float(text)), default=list(DEFAULT_DASK_SIZES),
                        help="sizes also run with data.engine: dask, against the pandas run of the same size (default: 1000000; none: skip)")
    parser.add_argument("--dask-workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--dask-partitions", type=int, default=8, help="data.dask.partitions (default 8)")
    parser.add_argument("--stream-mb", type=float, default=200,
                        help="one landing CSV of about this many MB through kedro run -p data, then a run with nothing new (default 200; 0: skip)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary files go (default: the system's temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--landing", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role == "generate":
        result = generate(args.rows, args.landing, args.regions_per_file, args.bad_share, args.seed, args.label)
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return 0
    if args.role == "anchor":
        args.result.write_text(json.dumps(anchor(args.landing, args.label)), encoding="utf-8")
        return 0
    if args.role == "pipeline":
        result = pipeline(args.landing, args.work, args.entities_per_chunk, args.label)
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return 0
    if args.role == "pipeline-dask":
        result = pipeline_dask(args.landing, args.work, args.dask_workers, args.dask_partitions, args.label)
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return 0

    sizes = sorted(set(args.sizes))
    if not sizes or sizes[0] < 1:
        parser.error("--sizes must be positive row counts")
    results, dask_results = [], []
    for rows in sizes:
        label = short_rows(rows)
        temp = Path(tempfile.mkdtemp(prefix=f"looplab-bench-data-{label}-", dir=args.workdir))
        try:
            common = ["--label", label, "--regions-per-file", str(args.regions_per_file)]
            say(f"[{label}] writing {rows:,} rows of landing files into {temp}")
            generated = run_child("generate", [*common, "--rows", str(rows), "--landing", str(temp / "landing"),
                                               "--bad-share", str(args.bad_share), "--seed", str(args.seed)],
                                  temp / "generate.json")
            say(f"[{label}] reading the same files with pyarrow alone, in a fresh process (the anchor)")
            floor = run_child("anchor", [*common, "--landing", str(temp / "landing")], temp / "anchor.json")
            say(f"[{label}] running ingestion → validation → features in a fresh process")
            size = run_child("pipeline", [*common, "--landing", str(temp / "landing"), "--work", str(temp / "work"),
                                          "--entities-per-chunk", str(args.entities_per_chunk)], temp / "pipeline.json")
            if rows in args.dask_sizes:
                say(f"[{label}] the same files with data.engine: dask, in a fresh client process")
                on_dask = run_child("pipeline-dask", [*common, "--landing", str(temp / "landing"), "--work", str(temp / "work-dask"),
                                                      "--dask-workers", str(args.dask_workers),
                                                      "--dask-partitions", str(args.dask_partitions)], temp / "pipeline-dask.json")
                if on_dask["rows_valid"] != size["rows_valid"] or on_dask["feature_rows"] != size["feature_rows"]:
                    raise SystemExit(f"bench-data: dask and pandas disagree: {on_dask['rows_valid']:,} vs {size['rows_valid']:,} valid rows")
                on_dask["time_ratio_over_pandas"] = on_dask["seconds"] / size["seconds"]
                on_dask["peak_rss_ratio_over_pandas"] = on_dask["peak_rss_mb"] / size["peak_rss_mb"]
                dask_results.append(on_dask)
                say(f"[{label}] dask: {on_dask['seconds']:.1f} s, {short_rate(on_dask['rows_per_second'])} rows/s, "
                    f"client peak RSS {short_mb(on_dask['peak_rss_mb'])}")
        finally:
            if not args.keep:
                shutil.rmtree(temp, ignore_errors=True)
        if size["rows"] != generated["rows"]:
            raise SystemExit(f"bench-data: {generated['rows']:,} rows generated but {size['rows']:,} ingested")
        size["generate"] = generated
        size["anchor_pyarrow"] = floor
        results.append(size)
        say(f"[{label}] {size['seconds']:.1f} s, {short_rate(size['rows_per_second'])} rows/s, peak RSS {short_mb(size['peak_rss_mb'])}")

    result = {"benchmark": "data", "machine": machine(("pandas", "numpy", "pyarrow", "pandera", "dask", "distributed")),
              "sizes": results, "dask": dask_results, **assess(results),
              "settings": {"regions_per_file": args.regions_per_file, "entities_per_chunk": args.entities_per_chunk,
                           "bad_share": args.bad_share, "seed": args.seed, "steps": list(STEPS),
                           "dask_sizes": args.dask_sizes, "dask_workers": args.dask_workers, "dask_partitions": args.dask_partitions},
              "not_timed": NOT_TIMED,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.stream_mb > 0:
        say(f"[stream] one landing CSV of about {args.stream_mb:g} MB through kedro run -p data, then a run with nothing new")
        temp = Path(tempfile.mkdtemp(prefix="looplab-bench-data-stream-", dir=args.workdir))
        try:
            result["stream"] = stream(args.stream_mb, temp, args.seed)
        finally:
            if not args.keep:
                shutil.rmtree(temp, ignore_errors=True)
    result["summary"] = summary(result)
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
