"""One big landing CSV for the streaming benchmark: many regions of the bundled year, written in pieces."""

from __future__ import annotations

from pathlib import Path

from scale import base_year, noisy_regions

from looplab.sources import with_text_times

REGIONS_PER_PIECE = 20  # regions built and appended at a time, so writing stays small in memory


def write_big_csv(
    path: Path,          # the CSV to write
    megabytes: float,    # about how large it gets (it stops at the first whole region past this)
    seed: int = 0,       # noise seed
    bad_share: float = 0.0,  # share of rows corrupted on purpose
) -> dict:               # {"rows", "bytes", "regions"}
    "Write regions of the bundled year as one CSV until it holds about `megabytes` MB; what was written."
    year = base_year()
    path.parent.mkdir(parents=True, exist_ok=True)
    target, rows, first = megabytes * 1e6, 0, 0
    with path.open("w", newline="") as file:
        while True:
            written = file.tell()
            if written >= target and first:
                break
            # the size of one region is known after the first piece: do not overshoot by more than one region
            count = REGIONS_PER_PIECE if not first else max(1, min(REGIONS_PER_PIECE, int((target - written) / (written / first)) + 1))
            frame = with_text_times(noisy_regions(year, first, count, seed, bad_share=bad_share))
            frame.to_csv(file, index=False, header=not first, float_format="%.4g")  # four digits, as sensors send them
            rows, first = rows + len(frame), first + count
    return {"rows": rows, "bytes": path.stat().st_size, "regions": first}
