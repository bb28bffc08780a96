"""The compiled predictor against its anchors: scikit-learn, looplab's kernel, treelite's GTIL and a tl2cgen-compiled library on the same rows.

The models are the champion's kind: the project's `training` parameters (`make_estimator`: one-hot +
passthrough `ColumnTransformer`, then `HistGradientBoostingRegressor` with the configured loss and
size) fitted on the demo's training window (`training.window`, one OpenMP thread); and the same
pipeline as a classifier of "busy" hours (more riders than the training window's median hour), with
scikit-learn's default loss. Both pipelines' preprocessing turns the demo year's feature rows into
one float64 matrix; 1, 100 and 10,000 of its rows (drawn with replacement, fixed seed) are what
every method predicts — only the trees are compared, never the preprocessing:

- scikit-learn: the estimator's `predict` (regression), `predict_proba(X)[:, 1]` (classifier), OpenMP
  threads limited with threadpoolctl;
- looplab kernel: `looplab.inference` (`CompiledModel.raw_predict` then the estimator's inverse link;
  serving compiles regressors only, the classifier's trees go through the same kernel here);
- treelite GTIL: `treelite.gtil.predict(model, X, nthread=...)` on `treelite.sklearn.import_model`;
- tl2cgen: the treelite model compiled to C by `tl2cgen.export_lib` (gcc -O3), `Predictor.predict`
  on a `DMatrix` built in the call; once as tl2cgen generates it by default ("default"), once tuned
  ("tuned"): branches annotated on the training rows (`annotate_branch`), thresholds quantised
  (`quantize: 1`) — its documented tuning — and gcc's `-march=native`, as numba compiles the kernel
  for the processor it runs on.

treelite and tl2cgen run in their own environment (benchmarks/treelite/.venv, built by
benchmarks/treelite/setup.sh; looplab's lock stays as it is): the estimators go there with skops
(the registry's trusted types), the matrices as .npy. Each call is timed alone (warm-up first); the
rounds alternate between the two environments (looplab's methods, then treelite's, ROUNDS times) so
load from other work on the machine falls on all of them. Reported per model, rows and threads:
median and p99 µs per call, rows/s at the median, and the largest |difference| from scikit-learn's
predictions. Target (issue 20): looplab's kernel at least as fast as treelite's best at 1, 100 and
10,000 rows on one thread — otherwise treelite replaces it.

    .venv/bin/python benchmarks/inference/run.py                  # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/inference/run.py --rounds 1 --budget 0.2 --out /tmp/inference.json

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TREELITE = ROOT / "benchmarks" / "treelite"
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
sys.path.insert(0, str(TREELITE))     # the timing loop both environments use
from common import machine, say, write_result  # noqa: E402
from predict import time_calls  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "inference.json"
SIZES = (1, 100, 10_000)
THREADS = (1, 2)  # every size on one thread; the largest also on two
# tl2cgen as it comes, and with its documented tuning plus code for this processor (numba compiles the kernel for it too)
TL2CGEN_VARIANTS = [{"name": "default", "params": {}},
                    {"name": "tuned", "annotate": True, "params": {"quantize": 1}, "options": ["-march=native"]}]
MATCH = 1.05  # treelite "matches" the kernel when its median is within 5 % of the kernel's


def fitted_models() -> tuple[dict, dict]:
    "The regression and the classifier (fitted pipelines), and the preprocessed matrices: the year's rows and each model's training rows."
    import pandas as pd

    from looplab.core import load_config, model_threads
    from looplab.features import build_features
    from looplab.sources import demo_rides
    from looplab.training import make_estimator

    params = load_config(root=ROOT)
    data, training = params["data"], deepcopy(params["training"])
    rides = demo_rides(data, root=ROOT)
    rides.insert(1, data["entity"]["column"], data["entity"]["default"])
    frame = build_features(rides, data)
    features, time_column = list(training["features"]), "event_timestamp"
    train = (frame[time_column] >= pd.Timestamp(training["window"]["start"])) & (frame[time_column] < pd.Timestamp(training["window"]["end"]))
    label = frame[data["target"]].astype(float)
    classifier_params = deepcopy(training)
    classifier_params["task"] = "classification"
    classifier_params["model"]["hist_gradient_boosting"] = {key: value for key, value in training["model"]["hist_gradient_boosting"].items()
                                                           if key != "loss"}
    busy = np.where(label > float(label[train].median()), "busy", "quiet")
    models = {}
    with model_threads({"threads": 1}):
        models["regression"] = make_estimator(training).fit(frame.loc[train, features], label[train])
        models["classifier"] = make_estimator(classifier_params).fit(frame.loc[train, features], busy[train.to_numpy()])
    matrices = {name: {"year": np.ascontiguousarray(model[:-1].transform(frame[features]), dtype=np.float64),
                       "train": np.ascontiguousarray(model[:-1].transform(frame.loc[train, features]), dtype=np.float64)}
                for name, model in models.items()}
    return models, matrices


def looplab_methods(models: dict) -> tuple[dict, dict]:
    "Per model: method → threads → callable(X) for scikit-learn and looplab's kernel; and the kernel's compile seconds."
    from looplab.inference import CompiledModel, _flatten

    methods, setup = {}, {}
    for name, pipeline in models.items():
        estimator = pipeline[-1]
        compiled = CompiledModel(pipeline, _flatten(estimator), threads=1)
        started = time.perf_counter()
        compiled.raw_predict(np.zeros((1, compiled.n_features)))  # numba compiles on the first call
        setup[f"{name}_kernel_compile_s"] = time.perf_counter() - started
        setup[f"{name}_trees"], setup[f"{name}_nodes"] = compiled.trees, compiled.nodes
        if name == "regression":
            sklearn = estimator.predict
        else:
            def sklearn(X, estimator=estimator):
                return estimator.predict_proba(X)[:, 1]
        methods[name] = {
            "scikit-learn": {threads: sklearn for threads in THREADS},
            "looplab kernel": {threads: (lambda X, t=threads, c=compiled: c.inverse_link(c.raw_predict(X, threads=t)))
                               for threads in THREADS},
        }
    return methods, setup


def time_looplab(methods: dict, cells: list[dict], matrices: dict, budget: float, round_: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    timings = []
    for cell in cells:
        X = matrices[cell["matrix"]]
        for method, by_threads in methods[cell["model"]].items():
            call = by_threads[cell["threads"]]
            with threadpool_limits(limits=cell["threads"], user_api="openmp"):
                times, cpu = time_calls(call, X, budget)
            timings.append({**cell, "method": method, "seconds": times, "cpu_seconds": cpu})
            say(f"[looplab round {round_}] {cell['model']}, {len(X)} rows, {cell['threads']} thread(s), {method}: "
                f"median {1e6 * sorted(times)[len(times) // 2]:.1f} µs")
    return timings


def statistics(times: list[float], cpu: list[float], rows: int) -> dict:
    values = np.asarray(times)
    median = float(np.median(values))
    return {"median_us": 1e6 * median, "p99_us": 1e6 * float(np.percentile(values, 99)), "mean_us": 1e6 * float(values.mean()),
            "calls": len(values), "rows_per_second": rows / median,
            "cpu_median_us": 1e6 * float(np.median(cpu)), "cpu_p99_us": 1e6 * float(np.percentile(cpu, 99))}


def exactness(got: np.ndarray, expected: np.ndarray) -> dict:
    difference = np.abs(got - expected)
    return {"max_abs_diff": float(np.nanmax(difference)) if len(difference) else 0.0,
            "max_rel_diff": float(np.nanmax(difference / np.maximum(np.abs(expected), 1e-300))) if len(difference) else 0.0,
            "identical": bool(got.shape == expected.shape and np.array_equal(got, expected, equal_nan=True)),
            "rows_differing": int(np.sum(got != expected))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating looplab's and treelite's environments (default 3)")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of calls per method and cell per round (default 0.5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep", action="store_true", help="keep the working folder (models, matrices, libraries)")
    args = parser.parse_args(argv)
    if not (shutil.which("gcc")):
        raise SystemExit("bench-inference: tl2cgen compiles the model with gcc, which is missing (apt-get install gcc)")
    say("[setup] treelite's environment (benchmarks/treelite/setup.sh)")
    subprocess.run(["sh", str(TREELITE / "setup.sh")], check=True)
    treelite_python = TREELITE / ".venv" / "bin" / "python"

    import skops.io

    from looplab.registry import SKOPS_TRUSTED_TYPES

    started = time.perf_counter()
    models, model_matrices = fitted_models()
    say(f"[setup] models fitted in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{name} {model[-1].n_iter_} trees" for name, model in models.items()))
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="looplab-bench-inference-"))
    try:
        matrices, manifest = {}, {"models": {}, "matrices": {}, "cells": [], "threads": list(THREADS), "budget_s": args.budget,
                                  "trusted": list(SKOPS_TRUSTED_TYPES), "tl2cgen_variants": TL2CGEN_VARIANTS}
        for name, model in models.items():
            skops.io.dump(model[-1], work / f"{name}.skops")
            np.save(work / f"{name}-train.npy", model_matrices[name]["train"])
            manifest["models"][name] = {"estimator": f"{name}.skops", "train": f"{name}-train.npy"}
            year = model_matrices[name]["year"]
            picked = rng.integers(0, len(year), max(SIZES))
            for rows in SIZES:
                key = f"{name}-{rows}"
                matrices[key] = np.ascontiguousarray(year[picked[:rows]])
                np.save(work / f"{key}.npy", matrices[key])
                manifest["matrices"][key] = f"{key}.npy"
                for threads in THREADS if rows == max(SIZES) else THREADS[:1]:
                    manifest["cells"].append({"model": name, "matrix": key, "rows": rows, "threads": threads})
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        methods, setup = looplab_methods(models)

        timings: list[dict] = []
        treelite_setup: dict = {}
        for round_ in range(1, args.rounds + 1):
            timings += time_looplab(methods, manifest["cells"], matrices, args.budget, round_)
            subprocess.run([str(treelite_python), str(TREELITE / "predict.py"), str(work), "--round", str(round_)], check=True)
            theirs = json.loads((work / f"treelite-round-{round_}.json").read_text(encoding="utf-8"))
            timings += theirs["timings"]
            treelite_setup = {**theirs["setup"], **treelite_setup}

        # exactness: every method's predictions on one thread against scikit-learn's
        outputs: dict = {}
        for cell in manifest["cells"]:
            if cell["threads"] != THREADS[0]:
                continue
            X = matrices[cell["matrix"]]
            for method, by_threads in methods[cell["model"]].items():
                outputs[(cell["matrix"], method)] = np.asarray(by_threads[THREADS[0]](X), dtype=np.float64).ravel()
            for file in (work / "out").glob(f"{cell['matrix']}-*.npy"):
                method = file.stem[len(cell["matrix"]) + 1:].replace("_", " ")
                outputs[(cell["matrix"], method)] = np.load(file)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    table: dict = {}
    for cell in manifest["cells"]:
        rows = cell["rows"]
        row = table.setdefault(cell["model"], {}).setdefault(f"{rows} rows, {cell['threads']} thread{'s' if cell['threads'] > 1 else ''}", {
            "rows": rows, "threads": cell["threads"], "methods": {}})
        for method in sorted({t["method"] for t in timings if t["matrix"] == cell["matrix"] and t["threads"] == cell["threads"]}):
            mine = [t for t in timings if t["matrix"] == cell["matrix"] and t["threads"] == cell["threads"] and t["method"] == method]
            figure = {**statistics([s for t in mine for s in t["seconds"]], [s for t in mine for s in t["cpu_seconds"]], rows),
                      "round_medians_us": [1e6 * float(np.median(t["seconds"])) for t in mine],
                      "round_cpu_medians_us": [1e6 * float(np.median(t["cpu_seconds"])) for t in mine]}
            if (cell["matrix"], method) in outputs:
                figure.update(exactness(outputs[(cell["matrix"], method)], outputs[(cell["matrix"], "scikit-learn")]))
            row["methods"][method] = figure
        treelite_names = [m for m in row["methods"] if m.startswith(("treelite", "tl2cgen"))]
        best = min(treelite_names, key=lambda m: row["methods"][m]["median_us"])
        kernel = row["methods"]["looplab kernel"]["median_us"]
        row["best_treelite"] = best
        row["best_treelite_over_kernel"] = row["methods"][best]["median_us"] / kernel
        best_cpu = min(treelite_names, key=lambda m: row["methods"][m]["cpu_median_us"])
        row["best_treelite_over_kernel_cpu"] = row["methods"][best_cpu]["cpu_median_us"] / row["methods"]["looplab kernel"]["cpu_median_us"]
        row["kernel_over_scikit_learn_speedup"] = row["methods"]["scikit-learn"]["median_us"] / kernel

    for model, rows in table.items():
        for key, row in rows.items():
            say(f"{model}, {key} (best treelite / kernel: wall {row['best_treelite_over_kernel']:.2f}, CPU {row['best_treelite_over_kernel_cpu']:.2f}):")
            for method, figure in row["methods"].items():
                exact = (f"max |diff| vs sklearn {figure['max_abs_diff']:.2e} ({figure['rows_differing']} rows differ)"
                         if "max_abs_diff" in figure else "")
                say(f"  {method:18s} median {figure['median_us']:10.1f} µs  p99 {figure['p99_us']:10.1f} µs  "
                    f"CPU {figure['cpu_median_us']:10.1f} µs  {figure['rows_per_second']:12,.0f} rows/s  {exact}")
    one_thread = {model: {key: row for key, row in rows.items() if row["threads"] == 1} for model, rows in table.items()}
    kernel_ahead = {model: all(row["best_treelite_over_kernel"] >= 1.0 for row in rows.values()) for model, rows in one_thread.items()}
    treelite_matches = {model: sorted({row["rows"] for row in rows.values() if row["best_treelite_over_kernel"] <= MATCH})
                        for model, rows in one_thread.items()}
    decision = ("keep the kernel: it is faster than treelite's best at every size on one thread"
                if not treelite_matches["regression"] else
                f"treelite matches or beats the kernel on the served kind of model at {', '.join(map(str, treelite_matches['regression']))} rows: "
                "propose replacing the kernel with it")

    def cell_text(model: str, rows: int) -> str:
        row = table[model][f"{rows} rows, 1 thread"]["methods"]
        short = {"scikit-learn": "sklearn", "looplab kernel": "kernel", "treelite GTIL": "GTIL"}
        return " / ".join(f"{short.get(m, m.replace('tl2cgen ', 'tl2cgen-'))} {row[m]['median_us']:.0f}"
                          for m in ("scikit-learn", "looplab kernel", "treelite GTIL", *(f"tl2cgen {v['name']}" for v in TL2CGEN_VARIANTS)))

    exact = all(row["methods"]["looplab kernel"].get("identical", True) for rows in table.values() for row in rows.values())
    worst = {method: max(row["methods"][method].get("max_abs_diff", 0.0) for rows in table.values() for row in rows.values())
             for method in ("treelite GTIL", *(f"tl2cgen {v['name']}" for v in TL2CGEN_VARIANTS))}
    summary = ("inference (median µs per call, 1 thread) regression " +
               "; ".join(f"{rows} rows: {cell_text('regression', rows)}" for rows in SIZES) +
               " · best treelite / kernel at 1/100/10,000 rows: " +
               "/".join(f"{table['regression'][f'{rows} rows, 1 thread']['best_treelite_over_kernel']:.2f}" for rows in SIZES) +
               " (CPU time " + "/".join(f"{table['regression'][f'{rows} rows, 1 thread']['best_treelite_over_kernel_cpu']:.2f}" for rows in SIZES) +
               "; classifier " + "/".join(f"{table['classifier'][f'{rows} rows, 1 thread']['best_treelite_over_kernel']:.2f}" for rows in SIZES) +
               f") · kernel {'bit-identical to' if exact else 'DIFFERS from'} sklearn; max |diff| " +
               ", ".join(f"{method} {value:.1e}" for method, value in worst.items()) +
               f" · target kernel ≤ treelite: {'met' if all(kernel_ahead.values()) else 'NOT met'} → {decision}")
    result = {"benchmark": "inference", "summary": summary, "models": table, "decision": decision,
              "met": {"kernel_at_least_as_fast_as_treelite": kernel_ahead},
              "targets": {"kernel_vs_best_treelite": "kernel median ≤ best treelite median at 1, 100, 10,000 rows, one thread",
                          "match_tolerance": MATCH},
              "setup": {**setup, **treelite_setup, "tl2cgen_variants": TL2CGEN_VARIANTS, "rounds": args.rounds, "budget_s": args.budget,
                        "rows": "the demo year's feature rows, preprocessed by each pipeline, drawn with replacement (seed 0)"},
              "machine": machine(("numpy", "scikit-learn", "numba", "skops")),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
