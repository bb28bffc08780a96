"""The stream benchmark: how fast the stream consumer stores what is published to a Redis stream, and how long a row waits.

A redis-server (a free port, a temporary folder, nothing written to disk) and a project copy (conf
environment `test`, its `events` stream source pointed at that server) are set up first.

Anchor, in the same run: Redis's own rate. ROWS messages (the same JSON bodies looplab stores) are
XADDed in pipelines, then read back with XREADGROUP and acknowledged with XACK in batches of BATCH,
with no work in between: `broker_messages_per_s` is ROWS / (publish + consume time).

Sustained rate: after one untimed warm-up batch, the rest of ROWS rows of the demo year are published at
once, then `looplab.stream.consume` (the consumer `looplab data stream` runs) stores them batch by batch — normalise, validate, upsert by key,
a new version of the validated table per batch — and acknowledges each batch: `messages_per_s` is
those rows / that time, and the ratio to the anchor is what storing costs. Each batch rewrites the
validated table as a new version, so the rate falls as the table grows.

Latency, event → online feature: the feature store is applied and materialised from the warm-up rows
(as a data run does), then a producer thread publishes the next LATENCY_ROWS rows at RATE messages/s
(default: half the sustained rate just measured, so the consumer keeps up) while the consumer runs;
a row's latency is from its XADD (the time in its stream id, Redis's clock) to the acknowledgement
of its batch, which comes after the batch is stored and each entity's newest features are written
into Feast's online store. p50 and p99 are reported; the online lookup at the end must see the last
row published.

    .venv/bin/python benchmarks/stream/run.py                      # 4000 rows, batches of 500, 2000 latency rows
    .venv/bin/python benchmarks/stream/run.py --rows 600 --latency-rows 200 --out /tmp/stream.json

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
from common import copy_project, machine, say, write_result  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "stream.json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_redis(folder: Path) -> tuple[subprocess.Popen, int]:
    "A redis-server on a free port, answering within 20 s."
    import redis

    port = free_port()
    process = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, socket_timeout=1).ping()
            return process, port
        except redis.exceptions.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("redis-server did not start (make system-packages installs it)") from None
            time.sleep(0.05)


class TimedSource:
    "A stream source that notes when each batch was acknowledged (after it was stored)."

    def __init__(self, source):
        self.source, self.acknowledged = source, []  # (time.time(), ids)
        self.name, self.timestamp_column = source.name, source.timestamp_column

    @property
    def redelivered(self) -> bool:
        return self.source.redelivered

    def read_batch(self):
        return self.source.read_batch()

    def commit(self, ids):
        self.source.commit(ids)
        self.acknowledged.append((time.time(), list(ids)))


def anchor_rate(client, bodies: list[str], batch: int) -> dict:
    "Redis alone: XADD every body (pipelined), then XREADGROUP + XACK them in batches."
    stream, group = "anchor", "anchor"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    start = time.perf_counter()
    for first in range(0, len(bodies), batch):
        pipe = client.pipeline(transaction=False)
        for body in bodies[first:first + batch]:
            pipe.xadd(stream, {"row": body})
        pipe.execute()
    published = time.perf_counter()
    read = 0
    while read < len(bodies):
        answer = client.xreadgroup(group, "c", {stream: ">"}, count=batch)
        entries = answer[0][1] if answer else []
        client.xack(stream, group, *[entry_id for entry_id, _ in entries])
        read += len(entries)
    done = time.perf_counter()
    return {"publish_s": published - start, "consume_s": done - published, "messages_per_s": len(bodies) / (done - start)}


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="messages for the anchor and the sustained rate")
    parser.add_argument("--latency-rows", type=int, default=2000, help="messages published at RATE for the latency")
    parser.add_argument("--rate", type=float, default=None, help="messages/s for the latency phase (default: half the sustained rate)")
    parser.add_argument("--batch", type=int, default=500, help="the consumer's batch_size")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    options = parser.parse_args(arguments)

    from looplab.core import load_config
    from looplab.features import build_features, materialize_features, online_features
    from looplab.ingestion import latest_version_file
    from looplab.sources import demo_rides, with_text_times
    from looplab.stream import consume, pick_stream_source

    facts = machine(("looplab", "redis", "pandas", "pandera"))
    with tempfile.TemporaryDirectory(prefix="looplab-bench-stream-") as scratch:
        scratch = Path(scratch)
        server, port = start_redis(scratch)
        try:
            project = copy_project(scratch / "project")
            settings = {"url": f"redis://127.0.0.1:{port}/0", "stream": "bench", "batch_size": options.batch, "block_ms": 200}
            (project / "conf" / "test" / "parameters_stream.yml").write_text(yaml.safe_dump({"data": {"sources": {"events": settings}}}))
            params = load_config("parameters", env="test", root=project)["data"]
            rides = with_text_times(demo_rides(params, project))
            needed = options.rows + options.latency_rows
            if needed > len(rides):
                raise SystemExit(f"--rows + --latency-rows is {needed}; the demo year has {len(rides)} hours")
            rows, later = rides.iloc[:options.rows], rides.iloc[options.rows:needed]
            source = pick_stream_source(params, "events")
            source.ensure_group()

            bodies = [json.dumps(record) for record in rows.to_dict("records")]
            say(f"anchor: XADD + XREADGROUP/XACK of {len(bodies)} messages, batches of {options.batch}")
            anchor = anchor_rate(source.client(), bodies, options.batch)

            warm, timed_rows = rows.iloc[:options.batch], rows.iloc[options.batch:]
            say(f"warm-up: one batch of {len(warm)} stored, not timed (imports, first catalog)")
            source.publish(warm)
            consume(source, params, env="test", root=project, until_idle=True)
            say("feature store: applied and materialised from the warm-up rows (as a data run does), so each batch updates it")
            materialize_features(build_features(pd.read_parquet(latest_version_file(project / params["validated_path"])), params), params, project)
            say(f"sustained: {len(timed_rows)} messages published, then stored by the consumer")
            source.publish(timed_rows)
            start = time.perf_counter()
            totals = consume(source, params, env="test", root=project, until_idle=True)
            sustained_s = time.perf_counter() - start
            stored = len(pd.read_parquet(latest_version_file(project / params["validated_path"])))
            assert totals.messages == len(timed_rows) and stored == len(rows), (totals, stored)
            sustained = len(timed_rows) / sustained_s

            rate = options.rate or max(1.0, sustained / 2)
            say(f"latency: {len(later)} messages at {rate:.0f}/s while the consumer runs")
            timed = TimedSource(source)
            records = later.to_dict("records")

            def produce():
                begin = time.perf_counter()
                for index, record in enumerate(records):
                    wait = begin + index / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    source.client().xadd(source.stream, {"row": json.dumps(record)})

            producer = threading.Thread(target=produce)
            producer.start()
            consumed = 0
            while consumed < len(records):  # each call stores until a read finds nothing (block_ms), then again
                consumed += consume(timed, params, env="test", root=project, until_idle=True).messages
            producer.join()
            table = pd.read_parquet(latest_version_file(project / params["validated_path"]))
            looked_up = online_features([table[params["entity"]["column"]].iloc[-1]], params, root=project)
            assert str(looked_up["event_timestamp"].iloc[0]) == later["timestamp"].iloc[-1], (looked_up, later.tail(1))
            latencies = np.array([acked * 1000 - int(entry_id.split("-")[0]) for acked, ids in timed.acknowledged for entry_id in ids])
        finally:
            server.terminate()
            server.wait(timeout=20)

    result = {
        "benchmark": "stream",
        "machine": facts,
        "settings": {"rows": options.rows, "latency_rows": options.latency_rows, "batch_size": options.batch, "latency_rate_per_s": rate},
        "anchor": {"what": "redis XADD (pipelined) then XREADGROUP + XACK, same bodies and batch size", **anchor},
        "sustained": {"messages_per_s": sustained, "seconds": sustained_s, "batches": totals.batches, "ratio_to_anchor": sustained / anchor["messages_per_s"]},
        "latency_ms": {"what": "XADD (stream id time) to the acknowledgement, after the batch is stored and its features are in Feast's online store",
                       "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
                       "max": float(latencies.max()), "messages": int(latencies.size)},
    }
    result["summary"] = (f"stream: {sustained:,.0f} msg/s stored (batches of {options.batch}) vs redis alone {anchor['messages_per_s']:,.0f} msg/s "
                         f"(ratio {result['sustained']['ratio_to_anchor']:.3f}); event -> online feature p50 {result['latency_ms']['p50']:.0f} ms, "
                         f"p99 {result['latency_ms']['p99']:.0f} ms at {rate:,.0f} msg/s")
    result["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return write_result(result, options.out)


if __name__ == "__main__":
    sys.exit(main())
