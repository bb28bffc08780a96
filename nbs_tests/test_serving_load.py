"""Faults under load, against real `looplab serve` workers behind the real nginx gateway.

A bounded wrk load with 5% malformed bodies gets no 5xx; a serving worker killed (SIGKILL) during
load is routed around (no failed request) and restarted; every 200 is in the prediction log after a
graceful shutdown. Each load lasts a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import good_record, ready, wait_until

WRK = "/usr/bin/wrk"
PREDICT = "/v1/models/bike-demand/predict"
pytestmark = pytest.mark.skipif(not (os.path.exists("/usr/sbin/nginx") and os.path.exists(WRK)),
                                reason="nginx or wrk is missing: run make system-packages")


def malformed_bodies(good: dict) -> list[str]:
    "One of each kind of bad body: not JSON, wrong type, missing field, unknown field, NaN, empty list, no records."
    missing = {key: value for key, value in good.items() if key != "temp"}
    return ['{"records": [{"hr": ', json.dumps({"records": [{**good, "hr": "noon"}]}), json.dumps({"records": [missing]}),
            json.dumps({"records": [{**good, "colour": "red"}]}), json.dumps({"records": [good]}).replace(str(good["temp"]), "NaN", 1),
            json.dumps({"records": []}), json.dumps({"rows": [good]})]


def wrk_script(path: Path, good: dict, bad_every: int) -> Path:
    "A wrk script: one-row POSTs, every `bad_every`-th body malformed; `done` prints the count of each status."
    bad = malformed_bodies(good)
    lua_bodies = ", ".join(f"[==[{body}]==]" for body in bad)
    path.write_text(f"""
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args)
  counts = {{}}
  sent = 0
  good = wrk.format("POST", "{PREDICT}", {{["Content-Type"] = "application/json"}}, [==[{json.dumps({"records": [good]})}]==])
  bad = {{}}
  for i, body in ipairs({{{lua_bodies}}}) do
    bad[i] = wrk.format("POST", "{PREDICT}", {{["Content-Type"] = "application/json"}}, body)
  end
end
function request()
  sent = sent + 1
  if {bad_every} > 0 and sent % {bad_every} == 0 then return bad[(sent / {bad_every}) % #bad + 1] end
  return good
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {{}}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("counts")) do total[status] = (total[status] or 0) + count end
  end
  for status, count in pairs(total) do io.write(string.format("status %d %d\\n", status, count)) end
  local e = summary.errors
  io.write(string.format("errors connect %d read %d write %d status %d timeout %d\\n", e.connect, e.read, e.write, e.status, e.timeout))
end
""", encoding="utf-8")
    return path


def run_wrk(url: str, script: Path, seconds: int, connections: int = 16) -> dict:
    "wrk's per-status counts and socket errors."
    done = subprocess.run([WRK, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), url + PREDICT],
                          capture_output=True, text=True, timeout=seconds + 60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = {int(status): int(count) for status, count in re.findall(r"^status (\d+) (\d+)$", done.stdout, re.M)}
    errors = dict(zip(("connect", "read", "write", "status", "timeout"),
                      map(int, re.search(r"^errors connect (\d+) read (\d+) write (\d+) status (\d+) timeout (\d+)$", done.stdout, re.M).groups()),
                      strict=True))
    return {"statuses": statuses, "errors": errors, "output": done.stdout}


def count_logged(folder: Path) -> int:
    return sum(1 for file in folder.glob("predictions-*.jsonl") for line in file.read_text(encoding="utf-8").splitlines() if line.strip())


def test_every_200_is_logged_after_a_graceful_shutdown(stack, tmp_path):
    "A closed-loop load (every request awaited, none abandoned), 5% malformed: logged predictions == 200 responses."
    folder = tmp_path / "predictions"
    stack.start_serve(folder)
    if stack.gateway is None:
        stack.start_gateway()
    good = good_record(stack.project)
    bodies = malformed_bodies(good)
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def send(worker: int) -> None:
        with requests.Session() as session:
            for index in range(150):
                body = bodies[(worker + index) % len(bodies)] if index % 20 == 19 else json.dumps({"records": [good]})
                status = session.post(stack.url + PREDICT, data=body, headers={"Content-Type": "application/json"}, timeout=30).status_code
                with lock:
                    counts[status] = counts.get(status, 0) + 1

    senders = [threading.Thread(target=send, args=(worker,)) for worker in range(6)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    stack.stop_serve()  # SIGTERM: each worker flushes what it still holds
    assert sum(counts.values()) == 900 and not any(status >= 500 for status in counts), counts
    assert counts.get(422, 0) == 6 * 7 and counts.get(200, 0) == 900 - 42, counts
    assert count_logged(folder) == counts[200]


def test_malformed_load_then_a_killed_worker(stack, tmp_path):
    "wrk with 5% malformed bodies: no 5xx; then a worker SIGKILLed under load: no failed request, and it comes back."
    stack.start_serve(tmp_path / "predictions")
    if stack.gateway is None:
        stack.start_gateway()
    good = good_record(stack.project)

    malformed = run_wrk(stack.url, wrk_script(tmp_path / "malformed.lua", good, bad_every=20), seconds=5)
    statuses = malformed["statuses"]
    assert statuses.get(200, 0) > 100, malformed["output"]
    assert not any(status >= 500 for status in statuses), malformed["output"]
    assert set(statuses) <= {200, 422}, malformed["output"]
    bad_share = statuses.get(422, 0) / sum(statuses.values())
    assert 0.03 < bad_share < 0.07, malformed["output"]  # wrk counts the 5% that are malformed, no more
    assert not any(count for kind, count in malformed["errors"].items() if kind != "status"), malformed["output"]  # no socket error

    victim = stack.worker_pid(1)
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(run_wrk(stack.url, wrk_script(tmp_path / "kill.lua", good, bad_every=0), seconds=8)))
    load.start()
    time.sleep(2.5)
    os.kill(victim, signal.SIGKILL)
    load.join(60)
    statuses = result["statuses"]
    assert set(statuses) == {200}, result["output"]  # the gateway retried the refused and broken connections on the other worker
    errors = result["errors"]
    assert statuses[200] > 100 and not (errors["connect"] or errors["write"] or errors["timeout"] or errors["status"]), result["output"]
    # A response the killed worker had begun to send when it died cannot be replayed by nginx (part of
    # it already went to the client): that connection is cut. At most the worker's requests in flight
    # (16 connections over 2 workers); seen here: 0 or 1. Every other request was answered 200.
    assert errors["read"] <= 8, result["output"]
    # `looplab serve` restarted the killed worker, and the gateway uses it again
    wait_until(lambda: stack.worker_pid(1) != victim and ready(stack.worker_url(1)), 120, "the killed worker's restart")
    assert "exited with status -9; restarted it as pid" in stack.serve_log.read_text()
