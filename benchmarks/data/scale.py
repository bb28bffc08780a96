"""Scale the bundled bike data to millions of rows: many regions, each a noisy copy of the year."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from looplab.core import load_config, project_paths
from looplab.sources import bikeshare_to_rides


def base_year() -> pd.DataFrame:
    "The bundled year as the canonical frame."
    params = load_config()["data"]
    raw = pd.read_csv(project_paths().layer("raw") / "Bikeshare.csv")
    return bikeshare_to_rides(raw, params["demo"]["year_start"])


def noisy_regions(year: pd.DataFrame, first: int, count: int, seed: int) -> pd.DataFrame:
    "`count` regions (numbered from `first`), each the year with multiplicative count noise and jittered weather."
    rng = np.random.default_rng(seed + first)
    rows = len(year)
    frame = pd.concat([year] * count, ignore_index=True)
    frame["region"] = np.repeat([f"r{first + i:05d}" for i in range(count)], rows)
    scale = rng.lognormal(0.0, 0.25, size=len(frame))
    frame["casual"] = np.rint(frame["casual"].to_numpy() * scale).astype("int64")
    frame["registered"] = np.rint(frame["registered"].to_numpy() * scale).astype("int64")
    frame["bikers"] = frame["casual"] + frame["registered"]
    for column in ("temp", "atemp", "hum", "windspeed"):
        frame[column] = np.clip(frame[column].to_numpy() + rng.normal(0, 0.02, len(frame)), 0, 1)
    return frame


def write_landing_files(folder: Path, rows: int, regions_per_file: int = 50, seed: int = 0) -> Iterator[Path]:
    "Write about `rows` rows as Parquet files of `regions_per_file` regions each; yields each file."
    year = base_year()
    regions = max(1, round(rows / len(year)))
    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, regions, regions_per_file):
        count = min(regions_per_file, regions - first)
        path = folder / f"rides_regions_{first:05d}.parquet"
        noisy_regions(year, first, count, seed).to_parquet(path, index=False)
        yield path
