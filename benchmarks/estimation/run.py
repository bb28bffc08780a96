"""Performance estimation before labels: looplab's estimators against NannyML's on the same windows.

For each dataset a served model is trained on its first weeks and never retrained; its reference is
the labelled rows right after its training window (what a looplab training run keeps as its
evaluation set); the rest of the data is cut into weekly windows (Monday to Sunday). Each window's
error is estimated without its labels — by looplab (`looplab.estimation`: direct loss estimation for a
regression, confidence-based estimation for a classifier) in this process, and by NannyML 0.13 (DLE /
CBPE) in its own environment (benchmarks/nannyml/.venv, built by benchmarks/nannyml/setup.sh) on the
same windows, exported as parquet files — and compared with the realised error.

Datasets:
- `bike` (regression, MAE): the demo's hourly rides (data/01_raw), the project's features; the model is
  `training.model` of the project, trained on `training.window` (January–February 2011), its reference
  the `evaluation_days` after it; weekly windows over the rest of 2011.
- `bike-busy` (binary classification, error rate): the same rows and features, the label "busy" when
  the hour has more riders than the training window's median hour; a gradient-boosting classifier.
- `breast-cancer` (binary classification, error rate): scikit-learn's bundled data, shuffled ten times;
  each time a logistic regression trained on the first 200 rows, a reference of the next 150, four
  windows of 50 rows (no time: a control without shift; 40 windows in all).

The figure per dataset and estimator: the mean over windows of |estimated − realised| (lower is better),
the share of windows whose realised error falls in the estimator's band, and the same mean error of
the naive guess "the window's error is the reference's". Target: looplab's mean error ≤ NannyML's.

    .venv/bin/python benchmarks/estimation/run.py [--datasets bike,bike-busy,breast-cancer] [--keep FOLDER]

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
from common import machine, say, write_result  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "estimation.json"
NANNYML = ROOT / "benchmarks" / "nannyml"
DATASETS = ("bike", "bike-busy", "breast-cancer")
SHUFFLES = 10  # the breast cancer data is small: its figure is over ten shuffles (40 windows)


def bike_rows() -> tuple[pd.DataFrame, dict, dict]:
    "The demo's feature rows for the whole year, the `data` and the `training` parameters."
    from looplab.core import load_config
    from looplab.features import build_features
    from looplab.sources import demo_rides

    params = load_config(root=ROOT)
    data = params["data"]
    rides = demo_rides(data, root=ROOT)
    rides.insert(1, data["entity"]["column"], data["entity"]["default"])
    return build_features(rides, data), data, params["training"]


def weekly(times: pd.Series, start: pd.Timestamp) -> pd.Series:
    "The Monday each time's week starts on (NaT before `start` and in the last, incomplete week)."
    from looplab.monitoring import window_of

    starts = pd.Series([window_of(time, 7)[0] for time in times], index=times.index)
    last_full = window_of(times.max() + pd.Timedelta(hours=1), 7)[0]
    return starts.where((starts >= start) & (starts < last_full))


def bike_case(task: str) -> dict:
    "The bike year as a regression (riders) or a classification (a busy hour)."
    from looplab.training import make_estimator

    frame, data, training = bike_rows()
    training = deepcopy(training)
    features, time = list(training["features"]), "event_timestamp"
    train_start, train_end = pd.Timestamp(training["window"]["start"]), pd.Timestamp(training["window"]["end"])
    reference_end = train_end + pd.Timedelta(days=float(training["window"]["evaluation_days"]))
    label = frame[data["target"]].astype(float)
    train = (frame[time] >= train_start) & (frame[time] < train_end)
    if task == "classification":
        threshold = float(label[train].median())
        label = pd.Series(np.where(label > threshold, "yes", "no"), index=frame.index)
        training["task"] = "classification"
        training["model"]["hist_gradient_boosting"] = {key: value for key, value in training["model"]["hist_gradient_boosting"].items()
                                                      if key != "loss"}
    model = make_estimator(training).fit(frame.loc[train, features], label[train])
    reference = (frame[time] >= train_end) & (frame[time] < reference_end)
    first_monday = pd.Timestamp(reference_end).normalize() + pd.Timedelta(days=(7 - reference_end.weekday()) % 7)
    window = weekly(frame[time], first_monday)
    return {"model": model, "features": features, "categorical": list(training.get("categorical") or []), "task": task,
            "reference": frame[reference].assign(label=label[reference]).reset_index(drop=True),
            "windows": frame[window.notna()].assign(label=label[window.notna()], window=window[window.notna()]).reset_index(drop=True),
            "description": (f"trained {train_start:%Y-%m-%d}..{train_end:%Y-%m-%d}, reference ..{reference_end:%Y-%m-%d}, "
                            f"weekly windows from {first_monday:%Y-%m-%d}")}


def breast_cancer_case(seed: int) -> dict:
    "scikit-learn's breast cancer data shuffled with `seed`: a logistic regression, windows of 50 rows drawn at random (no shift)."
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    features = list(data.feature_names)
    frame["label"] = np.where(frame["target"] == 1, "benign", "malignant")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame.loc[:199, features], frame.loc[:199, "label"])
    rest = frame.iloc[350:].reset_index(drop=True)
    rest = rest.iloc[: len(rest) // 50 * 50].assign(window=lambda part: pd.Timestamp("2000-01-03")
                                                    + pd.to_timedelta(7 * (np.arange(len(part)) // 50), unit="D"))
    return {"model": model, "features": features, "categorical": [], "task": "classification",
            "reference": frame.iloc[200:350].reset_index(drop=True), "windows": rest,
            "description": f"shuffled {SHUFFLES} times; each: trained on 200 rows, reference 150 rows, 4 windows of 50 rows"}


def served_outputs(case: dict, frame: pd.DataFrame) -> pd.DataFrame:
    "The served model's outputs on `frame`: prediction, and for a classifier the probability of its second class."
    model, features = case["model"], case["features"]
    outputs = pd.DataFrame(index=frame.index)
    outputs["prediction"] = model.predict(frame[features])
    if case["task"] == "classification":
        outputs["probability"] = model.predict_proba(frame[features])[:, 1]
    return outputs


def realised(case: dict, part: pd.DataFrame, outputs: pd.DataFrame) -> float:
    if case["task"] == "regression":
        return float(np.abs(part["label"].astype(float) - outputs["prediction"]).mean())
    return float((part["label"].astype(str) != outputs["prediction"].astype(str)).mean())


def looplab_estimates(case: dict) -> tuple[pd.DataFrame, float, float]:
    "looplab's estimate of every window, the reference's own error, and the seconds it took (fit and estimates)."
    from looplab.estimation import estimate_rows, fit_estimator

    started = time.perf_counter()
    estimator = fit_estimator(case["model"], case["reference"], case["features"], "label", case["task"])
    rows = []
    for window, part in case["windows"].groupby("window", sort=True):
        logged = part[case["features"]].assign(prediction=served_outputs(case, part)["prediction"].to_numpy())
        found = estimate_rows(estimator, logged, case["model"] if case["task"] == "classification" else None)
        rows.append({"window": window, "value": found["value"], "low": found["low"], "high": found["high"]})
    seconds = time.perf_counter() - started
    reference = realised(case, case["reference"], served_outputs(case, case["reference"]))
    return pd.DataFrame(rows), reference, seconds


def export(case: dict, folder: Path) -> None:
    "The reference and the windows as NannyML reads them: features, prediction (0/1 for a classifier), probability, label."
    folder.mkdir(parents=True, exist_ok=True)
    positive = None
    if case["task"] == "classification":
        positive = str(case["model"].classes_[1])
    for name, frame in (("reference", case["reference"]), ("windows", case["windows"])):
        outputs = served_outputs(case, frame)
        table = frame[case["features"] + (["window"] if name == "windows" else [])].copy()
        if positive is None:
            table["prediction"], table["label"] = outputs["prediction"].to_numpy(), frame["label"].astype(float).to_numpy()
        else:
            table["prediction"] = (outputs["prediction"].astype(str) == positive).astype(int).to_numpy()
            table["probability"] = outputs["probability"].to_numpy()
            table["label"] = (frame["label"].astype(str) == positive).astype(int).to_numpy()
        table.to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({"task": case["task"], "features": case["features"],
                                                      "categorical": case["categorical"]}, indent=2))


def nannyml_estimates(folder: Path) -> tuple[pd.DataFrame, float]:
    "NannyML's estimates of the exported windows, run in its own environment; and the seconds it took."
    subprocess.run(["sh", str(NANNYML / "setup.sh")], check=True)
    started = time.perf_counter()
    environment = {**os.environ, "NML_DISABLE_USAGE_LOGGING": "1"}  # NannyML's usage events: off, no network calls
    subprocess.run([str(NANNYML / ".venv" / "bin" / "python"), str(NANNYML / "estimate.py"), str(folder)], check=True, env=environment)
    return pd.read_parquet(folder / "nannyml.parquet"), time.perf_counter() - started


def window_table(name: str, case: dict, folder: Path) -> tuple[pd.DataFrame, float, dict]:
    "Per window: realised error, looplab's and NannyML's estimates and bands; the reference's error; the seconds each took."
    say(f"{name}: {case['description']}; {len(case['reference'])} reference rows, {case['windows']['window'].nunique()} windows")
    truth = []
    for window, part in case["windows"].groupby("window", sort=True):
        truth.append({"window": window, "rows": len(part), "realised": realised(case, part, served_outputs(case, part))})
    ours, reference_error, our_seconds = looplab_estimates(case)
    export(case, folder / name)
    theirs, their_seconds = nannyml_estimates(folder / name)
    table = pd.DataFrame(truth).merge(ours.add_prefix("looplab_").rename(columns={"looplab_window": "window"}), on="window") \
        .merge(theirs.add_prefix("nannyml_").rename(columns={"nannyml_window": "window"}), on="window")
    return table.assign(reference_error=reference_error), reference_error, {"looplab": our_seconds, "nannyml": their_seconds}


def summarise(name: str, cases: list[tuple[dict, pd.DataFrame, dict]]) -> dict:
    "The figures of one dataset over its windows (of every case: a dataset may be several shuffles)."
    table = pd.concat([part for _, part, _ in cases], ignore_index=True)
    case = cases[0][0]
    summary = {"task": case["task"], "description": case["description"], "reference_rows": len(case["reference"]),
               "cases": len(cases), "windows": len(table), "reference_error": float(table["reference_error"].mean()),
               "mean_realised": float(table["realised"].mean()),
               "naive_mean_abs_error": float((table["realised"] - table["reference_error"]).abs().mean())}
    for who in ("looplab", "nannyml"):
        miss = (table[f"{who}_value"] - table["realised"]).abs()
        inside = (table[f"{who}_low"] <= table["realised"]) & (table["realised"] <= table[f"{who}_high"])
        summary[who] = {"mean_abs_error": float(miss.mean()), "median_abs_error": float(miss.median()),
                        "band_coverage": float(inside.mean()), "mean_band_width": float((table[f"{who}_high"] - table[f"{who}_low"]).mean()),
                        "seconds": round(sum(seconds[who] for _, _, seconds in cases), 2)}
    summary["ratio"] = summary["looplab"]["mean_abs_error"] / summary["nannyml"]["mean_abs_error"]
    summary["per_window"] = [{key: (str(value) if isinstance(value, pd.Timestamp) else value) for key, value in row.items()}
                             for row in table.to_dict("records")]
    say(f"{name}: mean |estimated - realised|: looplab {summary['looplab']['mean_abs_error']:.4g}, "
        f"NannyML {summary['nannyml']['mean_abs_error']:.4g} (naive {summary['naive_mean_abs_error']:.4g}); "
        f"band coverage looplab {summary['looplab']['band_coverage']:.0%}, NannyML {summary['nannyml']['band_coverage']:.0%}")
    return summary


def compare(name: str, cases: list[dict], folder: Path) -> dict:
    tables = []
    for index, case in enumerate(cases):
        table, _, seconds = window_table(name if len(cases) == 1 else f"{name}-{index}", case, folder)
        tables.append((case, table, seconds))
    return summarise(name, tables)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--keep", type=Path, help="write the exported windows here (kept) instead of a temporary folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    builders = {"bike": lambda: [bike_case("regression")], "bike-busy": lambda: [bike_case("classification")],
                "breast-cancer": lambda: [breast_cancer_case(seed) for seed in range(SHUFFLES)]}
    with tempfile.TemporaryDirectory(prefix="looplab-estimation-") as temporary:
        folder = args.keep or Path(temporary)
        results = {name: compare(name, builders[name](), folder) for name in chosen}
    nannyml_version = subprocess.run([str(NANNYML / ".venv" / "bin" / "python"), "-c", "import nannyml; print(nannyml.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
    met = all(result["ratio"] <= 1.0 for result in results.values())
    summary = "estimation: mean |estimated - realised| looplab vs NannyML: " + "; ".join(
        f"{name} {result['looplab']['mean_abs_error']:.4g} vs {result['nannyml']['mean_abs_error']:.4g} (x{result['ratio']:.2f})"
        for name, result in results.items()) + f" — target looplab <= NannyML: {'met' if met else 'NOT met'}"
    return write_result({"benchmark": "estimation", "summary": summary, "target_met": met, "datasets": results,
                         "machine": {**machine(("scikit-learn", "pandas", "numpy")), "nannyml": nannyml_version},
                         "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, args.out)


if __name__ == "__main__":
    sys.exit(main())
