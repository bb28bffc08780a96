"""The BentoML anchor of `make bench-serving`: looplab's champion (a scikit-learn pipeline written with skops by
benchmarks/serving/run.py) behind a BentoML 1.4 service, tuned as a fair user would tune it: 2 workers, adaptive
batching over a batchable API taking a list of records, one OpenMP thread per worker, no access log.

The request body is looplab's single-record body, `{"records": [row]}`, at POST /predict; the answer is the list of
predictions. Run from benchmarks/bentoml/.venv (setup.sh), with the model folder (model.skops, trusted.json,
features.json) in BENCH_BENTOML_MODEL:

    BENCH_BENTOML_MODEL=/tmp/model OMP_NUM_THREADS=1 .venv/bin/bentoml serve service:BikeDemand \
        --working-dir benchmarks/bentoml --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bentoml

WORKERS = 2
MAX_BATCH_SIZE = 64  # requests merged into one predict call at most; 16 connections never fill it
MAX_LATENCY_MS = 1000  # a bound for the dispatcher, not a wait: it releases a batch as soon as waiting stops paying


@bentoml.service(workers=WORKERS, logging={"access": {"enabled": False}}, metrics={"enabled": False})
class BikeDemand:
    def __init__(self) -> None:
        import skops.io
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # one OpenMP thread per worker, as OMP_NUM_THREADS=1 says too: two workers on two cores
        folder = Path(os.environ["BENCH_BENTOML_MODEL"])
        # the types looplab's registry trusts, written beside the model by the bench: no bare pickle
        trusted = json.loads((folder / "trusted.json").read_text(encoding="utf-8"))
        self.model = skops.io.load(folder / "model.skops", trusted=trusted)
        self.features = json.loads((folder / "features.json").read_text(encoding="utf-8"))

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, records: list[dict[str, Any]]) -> list[float]:
        import pandas as pd

        frame = pd.DataFrame.from_records(records, columns=self.features)
        return self.model.predict(frame).tolist()
