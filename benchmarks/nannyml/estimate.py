"""NannyML's estimates of the windows looplab exported: run inside benchmarks/nannyml/.venv (see setup.sh).

    benchmarks/nannyml/.venv/bin/python benchmarks/nannyml/estimate.py FOLDER

FOLDER holds what `benchmarks/estimation/run.py` wrote: `manifest.json` (task, features, categorical),
`reference.parquet` (the served model's reference rows: features, prediction, probability, label) and
`windows.parquet` (the same columns and `window`, the window's start). NannyML learns on the reference
— direct loss estimation (DLE) of the MAE for a regression, confidence-based performance estimation
(CBPE) of the accuracy for a binary classifier — and estimates each window as one chunk. It writes
`nannyml.parquet`: window, value, low, high (the task's error: MAE, or 1 - accuracy).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

# NannyML sends usage events to a web service unless this is set; the benchmark makes no network calls
os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"

import nannyml as nml  # noqa: E402
import pandas as pd  # noqa: E402


def _column(frame: pd.DataFrame, metric: str, part: str) -> float:
    return float(frame[(metric, part)].iloc[0])


def main(folder: Path) -> None:
    warnings.filterwarnings("ignore")
    manifest = json.loads((folder / "manifest.json").read_text())
    reference, windows = pd.read_parquet(folder / "reference.parquet"), pd.read_parquet(folder / "windows.parquet")
    for frame in (reference, windows):
        for column in manifest["categorical"]:
            frame[column] = frame[column].astype("category")
    if manifest["task"] == "regression":
        estimator = nml.DLE(feature_column_names=manifest["features"], y_pred="prediction", y_true="label", metrics=["mae"],
                            chunk_number=1, tune_hyperparameters=False)
        metric = "mae"
    else:
        estimator = nml.CBPE(y_pred_proba="probability", y_pred="prediction", y_true="label", problem_type="classification_binary",
                             metrics=["accuracy"], chunk_number=1)
        metric = "accuracy"
    estimator.fit(reference)
    rows = []
    for window, part in windows.groupby("window", sort=True):
        result = estimator.estimate(part.drop(columns=["label"])).filter(period="analysis").to_df()
        value = _column(result, metric, "value")
        low, high = _column(result, metric, "lower_confidence_boundary"), _column(result, metric, "upper_confidence_boundary")
        if metric == "accuracy":  # the error rate: 1 - accuracy, its band turned round
            value, low, high = 1 - value, 1 - high, 1 - low
        rows.append({"window": window, "value": value, "low": low, "high": high})
    pd.DataFrame(rows).to_parquet(folder / "nannyml.parquet", index=False)
    print(f"NannyML {nml.__version__}: {len(rows)} windows estimated in {folder}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
