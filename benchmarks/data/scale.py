"""Scale the bundled bike data to millions of rows: many regions, each a noisy copy of the year.

Each region is the bundled year (8,645 hourly rows) with multiplicative noise on the counts and
jitter on the weather; the last region is cut short so the total is exactly the rows asked for.
A small share of rows is corrupted on purpose (out-of-range hour, unknown weather, counts that do
not add up, negative counts, repeated keys) so validation's quarantine path is measured too.
Files are written region by region, `regions_per_file` regions each, so memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from looplab.core import load_config, project_paths
from looplab.sources import bikeshare_to_rides

DEFECTS = ("hour out of range", "unknown weather", "counts do not add up", "negative count", "repeated key")


def base_year(root: Path | str | None = None) -> pd.DataFrame:
    "The bundled year as the canonical frame."
    params = load_config(root=root)["data"]
    raw = pd.read_csv(project_paths(root).layer("raw") / "Bikeshare.csv")
    return bikeshare_to_rides(raw, params["demo"]["year_start"])


def corrupt(frame: pd.DataFrame, share: float, rng: np.random.Generator) -> int:
    "Corrupt about `share` of the rows in place, cycling through `DEFECTS`; returns how many rows were touched."
    count = int(round(len(frame) * share))
    if count == 0:
        return 0
    rows = np.sort(rng.choice(np.arange(1, len(frame)), size=min(count, len(frame) - 1), replace=False))
    for defect, picked in enumerate(np.array_split(rows, len(DEFECTS))):
        if not len(picked):
            continue
        if DEFECTS[defect] == "hour out of range":
            frame.loc[picked, "hr"] = 27
        elif DEFECTS[defect] == "unknown weather":
            frame.loc[picked, "weathersit"] = "fog"
        elif DEFECTS[defect] == "counts do not add up":
            frame.loc[picked, "bikers"] += 1
        elif DEFECTS[defect] == "negative count":
            frame.loc[picked, "casual"] = -1
            frame.loc[picked, "bikers"] = frame.loc[picked, "registered"] - 1
        else:  # the row takes the key of the row before it: both rows are quarantined as duplicates
            frame.loc[picked, "timestamp"] = frame["timestamp"].to_numpy()[picked - 1]
            frame.loc[picked, "region"] = frame["region"].to_numpy()[picked - 1]
    return len(rows)


def noisy_regions(
    year: pd.DataFrame,      # the bundled year, canonical frame
    first: int,              # number of the first region
    count: int,              # how many regions
    seed: int,               # base seed; each file's noise depends on it and on `first`
    last_rows: int | None = None,  # rows of the last region (the first hours of the year); all when None
    bad_share: float = 0.0,  # share of rows corrupted on purpose
) -> pd.DataFrame:
    "`count` regions (numbered from `first`), each the year with multiplicative count noise and jittered weather."
    rng = np.random.default_rng(seed + first)
    rows = len(year)
    sizes = [rows] * count
    if last_rows is not None:
        sizes[-1] = last_rows
    frame = pd.concat([year.iloc[:size] for size in sizes], ignore_index=True)
    frame.insert(1, "region", np.repeat([f"r{first + i:05d}" for i in range(count)], sizes))
    scale = rng.lognormal(0.0, 0.25, size=len(frame))
    frame["casual"] = np.rint(frame["casual"].to_numpy() * scale).astype("int64")
    frame["registered"] = np.rint(frame["registered"].to_numpy() * scale).astype("int64")
    frame["bikers"] = frame["casual"] + frame["registered"]
    for column in ("temp", "atemp", "hum", "windspeed"):
        frame[column] = np.clip(frame[column].to_numpy() + rng.normal(0, 0.02, len(frame)), 0, 1)
    corrupt(frame, bad_share, rng)
    return frame


def write_landing_files(
    folder: Path,               # the landing folder (created)
    rows: int,                  # total rows, exactly
    regions_per_file: int = 50, # regions per Parquet file (≈ 432,000 rows at 50)
    seed: int = 0,              # noise seed
    bad_share: float = 0.0,     # share of rows corrupted on purpose
    year: pd.DataFrame | None = None,  # the base year; read from the bundled file when None
) -> Iterator[tuple[Path, int]]:
    "Write exactly `rows` rows as Parquet files of `regions_per_file` regions each; yields (file, rows) per file."
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    year = base_year() if year is None else year
    full, remainder = divmod(rows, len(year))
    regions = full + (1 if remainder else 0)
    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, regions, regions_per_file):
        count = min(regions_per_file, regions - first)
        last_rows = remainder if remainder and first + count == regions else None
        frame = noisy_regions(year, first, count, seed, last_rows, bad_share)
        path = folder / f"rides_regions_{first:05d}.parquet"
        frame.to_parquet(path, index=False)
        yield path, len(frame)
