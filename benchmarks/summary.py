"""The one summary table of the last benchmark results: benchmarks/results/*.json → benchmarks/results/SUMMARY.md.

Each benchmark writes its own JSON structure; one small extractor per benchmark turns it into rows of
the same columns. The anchor is measured in the same run as looplab; ratio = looplab value / anchor
value (copied from the result when it holds one); target and met follow the benchmark's own rule.
A benchmark without a result file gets a "not run" row; a result whose structure its extractor does
not know stops the script with a message naming the file and the missing key.

    .venv/bin/python benchmarks/summary.py                                  # what `make bench-summary` runs
    .venv/bin/python benchmarks/summary.py --results /tmp/results --out /tmp/SUMMARY.md
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("benchmark", "measure", "anchor", "anchor value", "looplab value", "ratio", "target", "met")
PYARROW = "`pyarrow.csv.read_csv` alone"


class ResultError(Exception):
    "A result file whose structure its extractor does not know."


def pick(result: dict, *keys: str | int):
    "result[keys[0]][keys[1]]…, or a ResultError naming the first key that is missing."
    value = result
    for depth, key in enumerate(keys):
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise ResultError("missing key " + "".join(f"[{name!r}]" for name in keys[:depth + 1])) from None
    return value


def figure(value: float | None, unit: str = "") -> str:
    "A number as the table shows it (three significant digits, thousands separated), with its unit; — when missing."
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 999.5 else f"{value:.3g}"
    return f"{text} {unit}" if unit else text


def limit(relation: str, value: float | None, unit: str = "") -> str:
    "A target as text, `ratio ≥ 10` or `≤ 25 ms`; — when the result has none."
    return "—" if value is None else f"{relation} {figure(value, unit)}"


def row(measure: str, anchor: str = "—", anchor_value: str = "—", looplab_value: str = "—",
        ratio: float | None = None, target: str = "—", met: bool | None = None) -> list[str]:
    "One table row, without its benchmark column."
    return [measure, anchor, anchor_value, looplab_value, figure(ratio), target, "—" if met is None else "met" if met else "MISSED"]


# --- one extractor per benchmark: its result → rows (each `partial(pick, result, …)` reads below one key, naming missing keys in full)

def data_rows(result: dict) -> list[list[str]]:
    first, last = partial(pick, result, "sizes", 0), partial(pick, result, "sizes", -1)
    targets, met = partial(pick, result, "targets"), partial(pick, result, "met")
    two = first("rows") != last("rows")  # a single size has no anchor
    anchor = f"the same steps at {first('rows'):,} rows" if two else "—"
    rows = [row(f"time at {last('rows'):,} rows", anchor, figure(first("seconds"), "s") if two else "—",
                f"{figure(last('seconds'), 's')} ({figure(last('rows_per_second'), 'rows/s')})",
                pick(result, "time_ratio", "value"), limit("ratio ≤", targets("time_ratio_max")), met("time_ratio")),
            row(f"peak RSS at {targets('peak_rss_at_rows'):,} rows", anchor, figure(first("peak_rss_mb"), "MB") if two else "—",
                figure(last("peak_rss_mb"), "MB"), last("peak_rss_mb") / first("peak_rss_mb") if two else None,
                limit("≤", targets("peak_rss_mb_max"), "MB"), met("peak_rss"))]
    floor = pick(result, "sizes", -1).get("anchor_pyarrow")  # the same landing files read with pyarrow alone, same run
    if floor:
        rows.insert(0, row(f"rows/s at {last('rows'):,} rows, end to end", "`pyarrow.parquet.read_table` alone, same files",
                           figure(floor["rows_per_second"], "rows/s"), figure(last("rows_per_second"), "rows/s"),
                           last("rows_per_second") / floor["rows_per_second"], limit("≥", targets("rows_per_second_min"), "rows/s"),
                           met("rows_per_second")))
    for index in range(len(result.get("dask", []))):
        dask = partial(pick, result, "dask", index)
        rows.append(row(f"time at {dask('rows'):,} rows, dask engine", "pandas, chunked (same run)",
                        figure(dask("seconds") / dask("time_ratio_over_pandas"), "s"), figure(dask("seconds"), "s"), dask("time_ratio_over_pandas")))
    if result.get("stream"):  # one big landing CSV through `kedro run -p data`, beside pyarrow reading it alone
        stream = partial(pick, result, "stream")
        csv = f"{stream('file', 'bytes') / 1e6:.0f} MB CSV: `kedro run -p data`"
        pyarrow_s, noop_s, pyarrow_mb = stream("anchor_pyarrow", "seconds"), stream("noop_run", "seconds"), stream("anchor_pyarrow", "peak_rss_mb")
        rows += [row(f"{csv} taking it, peak RSS", PYARROW, figure(pyarrow_mb, "MB"), figure(stream("data_run", "peak_rss_mb"), "MB"),
                     stream("ratios", "peak_rss_over_anchor"), limit("≤", stream("targets", "peak_rss_mb_max"), "MB"), stream("met", "peak_rss")),
                 row(f"{csv} taking it, time", PYARROW, figure(pyarrow_s, "s"), figure(stream("data_run", "seconds"), "s"),
                     stream("ratios", "time_over_anchor")),
                 row(f"{csv} with nothing new, time", PYARROW, figure(pyarrow_s, "s"), figure(noop_s, "s"), noop_s / pyarrow_s,
                     limit("≤", stream("targets", "noop_seconds_max"), "s"), stream("met", "noop_seconds"))]
    return rows


def training_rows(result: dict) -> list[list[str]]:
    direct, rows = pick(result, "variants", "direct", "median_wall_s"), []
    for variant, label in (("kedro", "`kedro run -p training`"), ("papermill", "the papermill notebook")):
        wall, overhead = pick(result, "variants", variant, "median_wall_s"), pick(result, "overheads", variant, "seconds")
        target, met = ("—", None) if variant == "kedro" else (  # only papermill's overhead has a target
            limit("overhead ≤", pick(result, "target", "papermill_overhead_s_max"), "s"), pick(result, "met", "papermill_overhead"))
        rows.append(row(f"one training run by {label}, median wall time", "direct calls in a fresh process (same run)", figure(direct, "s"),
                        f"{figure(wall, 's')} ({overhead:+.1f} s)", pick(result, "overheads", variant, "ratio"), target, met))
    return rows


def serving_rows(result: dict) -> list[list[str]]:
    targets, met, mlflow = partial(pick, result, "targets"), partial(pick, result, "met"), "`mlflow models serve`"
    rps, p99 = pick(result, "looplab", "rps"), pick(result, "looplab", "p99_ms")
    mlflow_rps, mlflow_p99 = pick(result, "mlflow", "rps"), pick(result, "mlflow", "p99_ms")
    rows = [row("requests/s, one row each, two workers behind the gateway", mlflow, figure(mlflow_rps, "rps"), figure(rps, "rps"),
                pick(result, "rps_ratio"), limit("ratio ≥", targets("rps_ratio_min")), met("rps_ratio")),
            row("p99 latency, same load", mlflow, figure(mlflow_p99, "ms"), figure(p99, "ms"), p99 / mlflow_p99,
                limit("≤", targets("looplab_p99_ms_max"), "ms"), met("looplab_p99"))]
    bentoml_p99_max = targets("bentoml_looplab_p99_ms_max")
    bentoml_target = f"{limit('ratio ≥', targets('bentoml_ratio_min'))} with p99 ≤ {figure(bentoml_p99_max)} ms"
    if "failed" in pick(result, "bentoml"):  # the anchor could not be measured; its row says why
        reason = (str(pick(result, "bentoml", "failed")).strip().splitlines() or ["no reason"])[0][:80]
        rows.append(row("requests/s, same load", "BentoML", f"failed: {reason}", figure(rps, "rps"), None, bentoml_target, None))
    else:
        bentoml_p99 = pick(result, "bentoml", "p99_ms")
        rows += [row("requests/s, same load", "BentoML", figure(pick(result, "bentoml", "rps"), "rps"), figure(rps, "rps"),
                     pick(result, "rps_ratio_bentoml"), bentoml_target, met("bentoml")),
                 row("p99 latency, same load", "BentoML", figure(bentoml_p99, "ms"), figure(p99, "ms"), p99 / bentoml_p99,
                     limit("≤", bentoml_p99_max, "ms"), p99 <= bentoml_p99_max)]
    rows.append(row("requests/s, one worker without nginx", "bare ASGI JSON echo, one worker", figure(pick(result, "echo", "rps"), "rps"),
                    figure(pick(result, "looplab_worker_direct", "rps"), "rps"), pick(result, "echo_share"), limit("ratio ≥", targets("echo_share_min")),
                    met("echo_share")))
    for key, form in (("batch", "records"), ("batch_columns", "columns")):
        rows.append(row(f"rows/s, requests of {pick(result, key, 'rows_per_request'):,} rows as {form}",
                        looplab_value=figure(pick(result, key, "rows_per_second"), "rows/s"),
                        target=limit("≥", targets("batch_rows_per_second_min", form), "rows/s"), met=met("batch_rows_per_second", form)))
    return rows


def monitoring_rows(result: dict) -> list[list[str]]:
    drift, rows = partial(pick, result, "drift"), []
    for backend in drift("backends"):
        rows.append(row(f"drift check of {drift('rows'):,} rows × {drift('features')} features, {backend} backend",
                        "`ks_2samp` / `chi2_contingency` called directly", figure(drift("anchor_median_s"), "s"),
                        figure(drift("backends", backend, "median_s"), "s"), drift("backends", backend, "ratio_to_anchor"),
                        limit("≤", pick(result, "targets", "drift_check_max_s"), "s"), pick(result, "met", "drift_check", backend)))
    status = pick(result, "replay", "status")  # measured, or why not: not available, skipped, failed
    replayed = figure(pick(result, "replay", "days_per_second"), "days/s") if status == "measured" else status
    return [*rows, row("`looplab replay`, simulated days per second", looplab_value=replayed)]


def estimation_rows(result: dict) -> list[list[str]]:
    rows = []
    for name in pick(result, "datasets"):
        dataset = partial(pick, result, "datasets", name)
        rows.append(row(f"{name} ({dataset('task')}): mean |estimated − realised| per window", "NannyML",
                        figure(dataset("nannyml", "mean_abs_error")), figure(dataset("looplab", "mean_abs_error")),
                        dataset("ratio"), "ratio ≤ 1", dataset("ratio") <= 1.0))
    return rows


def inference_rows(result: dict) -> list[list[str]]:
    rows = []
    for model, cells in pick(result, "models").items():
        for _, key in sorted((pick(result, "models", model, key, "rows"), key) for key in cells if pick(result, "models", model, key, "threads") == 1):
            cell = partial(pick, result, "models", model, key)  # a cell on one thread, where the target is
            best_us, kernel_us = cell("methods", cell("best_treelite"), "median_us"), cell("methods", "looplab kernel", "median_us")
            rows.append(row(f"{model}: µs per call, batches of {cell('rows'):,}, one thread", f"best of treelite / tl2cgen: {cell('best_treelite')}",
                            figure(best_us, "µs"), figure(kernel_us, "µs"), kernel_us / best_us, "ratio ≤ 1", cell("best_treelite_over_kernel") >= 1.0))
    return rows


def logs_rows(result: dict) -> list[list[str]]:
    rows = []
    for name in pick(result, "filters"):
        figures, grep = partial(pick, result, "filters", name), name == "request_id"  # grep -cF counts the same request id: that filter's anchor
        rows.append(row(f"`looplab logs {figures('options')}` over {pick(result, 'lines'):,} lines", "`grep -cF ID` on the same files" if grep else "—",
                        figure(pick(result, "anchor", "seconds"), "s") if grep else "—", figure(figures("command_s"), "s"),
                        pick(result, "ratio_request_id_to_grep") if grep else None, limit("≤", figures("target_s"), "s"), figures("met")))
    return rows


def stream_rows(result: dict) -> list[list[str]]:
    return [row(f"messages/s stored, batches of {pick(result, 'settings', 'batch_size'):,}", "Redis alone: XADD, XREADGROUP + XACK",
                figure(pick(result, "anchor", "messages_per_s"), "msg/s"), figure(pick(result, "sustained", "messages_per_s"), "msg/s"),
                pick(result, "sustained", "ratio_to_anchor")),
            *(row(f"event → online feature, {share}", looplab_value=figure(pick(result, "latency_ms", share), "ms")) for share in ("p50", "p99"))]


# In the order `make bench` runs them.
EXTRACTORS = {"data": data_rows, "training": training_rows, "serving": serving_rows, "monitoring": monitoring_rows,
              "estimation": estimation_rows, "inference": inference_rows, "logs": logs_rows, "stream": stream_rows}


# --- the table ---------------------------------------------------------------------------------

def markdown_table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    "The lines of a Markdown table; a | inside a cell is escaped."
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(text).replace("|", "\\|") for text in cells) + " |" for cells in rows)]


def summary(results: Path) -> str:
    "SUMMARY.md's text for the result files in `results`; a ResultError listing every file it cannot read."
    table, measured, errors = [], [], []
    for name, extract in EXTRACTORS.items():
        path = results / f"{name}.json"
        if not path.is_file():
            table.append([name, f"not run: make bench-{name}", *[""] * 6])
            continue
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            table += [[name, *cells] for cells in extract(result)]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            errors.append(f"{path}: not a readable JSON file ({error})")
        except ResultError as error:
            errors.append(f"{path}: {error} — not the structure benchmarks/{name}/run.py writes; "
                          f"run `make bench-{name}` again, or update `{name}_rows` in benchmarks/summary.py")
        except (TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as error:
            errors.append(f"{path}: an unexpected value for `{name}_rows` in benchmarks/summary.py ({type(error).__name__}: {error})")
        else:
            when = next((str(result[key]) for key in ("created_at", "measured_at", "time") if result.get(key)), "not recorded")  # each names it its way
            load = (result.get("machine") or {}).get("load_average_1min")
            measured.append([name, when, figure(load), f"`{path.name}`"])
    if errors:
        raise ResultError("\n".join(errors))
    lines = ["# Benchmark summary", "", "The last result of each benchmark in `benchmarks/results/`, as `make bench` leaves them "
             "(`make bench-summary` writes this table again from the JSON files). Each anchor is measured in the same run as looplab, on the "
             "same machine; ratio = looplab value / anchor value; target and met follow each benchmark's own rule (benchmarks/README.md).", "",
             *markdown_table(COLUMNS, table)]
    if measured:
        lines += ["", "## When, and under what load", "",
                  *markdown_table(("benchmark", "measured", "load average (1 min) at the start", "result"), measured)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, metavar="DIR", help="the folder of the results (default benchmarks/results)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="the Markdown file to write (default: SUMMARY.md in the results folder)")
    args = parser.parse_args(argv)
    for path in sorted(path for path in args.results.glob("*.json") if path.stem not in EXTRACTORS):
        print(f"note: {path} left out: no extractor for {path.stem!r} in benchmarks/summary.py", file=sys.stderr)
    try:
        text = summary(args.results)
    except ResultError as error:
        print("error: " + str(error).replace("\n", "\nerror: "), file=sys.stderr)  # one line per file
        return 1
    out = args.out or args.results / "SUMMARY.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
