"""No answered prediction is lost: a `looplab serve` worker killed with SIGKILL under load leaves every 200 in the prediction log.

Clients send one- and three-row requests straight to both workers, each request under its own
`X-Request-ID`; the second worker is killed while requests are in flight and `looplab serve`
restarts it. After a graceful stop every request that was answered 200 is in the log with all its
rows, exactly once, and nothing is there that was not sent. A log that cannot be written answers
503, counted in /metrics, and the prediction is not logged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import requests

from conftest import good_record, ready, wait_until

MODEL = "bike-demand"
PREDICT = f"/v1/models/{MODEL}/predict"
CLIENTS = 8


class Load:
    "Client threads that POST to both workers until stopped, each request under its own id; what each got."

    def __init__(self, stack, record: dict):
        self.stack, self.record = stack, record
        self.lock, self.stop, self.killed = threading.Lock(), threading.Event(), threading.Event()
        self.sent: dict[str, int] = {}          # request id → rows, every request sent
        self.answered: dict[str, int] = {}      # request id → rows predicted, every 200
        self.victim_answered: set[str] = set()  # 200s from the second worker before it was killed
        self.statuses: Counter = Counter()      # status (or "no answer") → count
        self.wrong_ids: list[tuple[str, str]] = []
        self.threads = [threading.Thread(target=self._send, args=(client,), daemon=True) for client in range(CLIENTS)]

    def _send(self, client: int) -> None:
        index = 0
        with requests.Session() as session:
            while not self.stop.is_set():
                index += 1
                request_id, rows, worker = f"c{client}-{index}", 3 if index % 5 == 0 else 1, (client + index) % 2
                with self.lock:
                    self.sent[request_id] = rows
                    before_kill = not self.killed.is_set()
                try:
                    response = session.post(self.stack.worker_url(worker) + PREDICT, json={"records": [self.record] * rows},
                                            headers={"X-Request-ID": request_id}, timeout=60)
                except requests.RequestException:  # the killed worker: refused, or cut off before its answer
                    with self.lock:
                        self.statuses["no answer"] += 1
                    self.stop.wait(0.05)  # no busy loop while it restarts
                    continue
                with self.lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        answer = response.json()
                        if answer["request_id"] != request_id:
                            self.wrong_ids.append((request_id, answer["request_id"]))
                        self.answered[request_id] = len(answer["predictions"])
                        if worker == 1 and before_kill:
                            self.victim_answered.add(request_id)

    def count(self) -> int:
        with self.lock:
            return len(self.answered)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for thread in self.threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in self.threads), "a client thread did not end within 120 s"


def test_a_worker_killed_under_load_loses_no_answered_prediction(stack, tmp_path):
    from looplab.prediction_log import read_prediction_log

    folder = tmp_path / "predictions"
    stack.start_serve(folder)
    victim = stack.worker_pid(1)
    with Load(stack, good_record(stack.project)) as load:
        wait_until(lambda: load.count() >= 300, 300, "300 answered requests")
        with load.lock:  # a request answered after this was answered by a live worker
            load.killed.set()
        os.kill(victim, signal.SIGKILL)
        at_kill = load.count()
        wait_until(lambda: stack.worker_pid(1) != victim and ready(stack.worker_url(1)), 180, "the killed worker's restart")
        wait_until(lambda: load.count() >= at_kill + 200, 300, "200 answers after the restart")
    stack.stop_serve()  # graceful: the live workers close their logs

    assert "exited with status -9; restarted it as pid" in stack.serve_log.read_text()
    assert not load.wrong_ids, load.wrong_ids[:5]  # each answer carries the client's own id
    assert set(load.statuses) <= {200, "no answer"}, load.statuses
    assert load.victim_answered, "the killed worker answered nothing before the kill"
    logged = read_prediction_log(folder)
    victims = list(folder.glob(f"predictions-*-{victim}-*.jsonl"))
    assert len(victims) == 1, sorted(file.name for file in folder.iterdir())
    lost_by_victim = sorted(load.victim_answered - request_ids(victims[0]))
    assert not lost_by_victim, f"{len(lost_by_victim)} of the killed worker's {len(load.victim_answered)} answers are not in its log"
    rows = logged.groupby("request_id")["row"].agg(list)
    missing = sorted(set(load.answered) - set(rows.index))
    assert not missing, f"{len(missing)} of {len(load.answered)} answered requests are missing from the log: {missing[:5]}"
    assert not logged.duplicated(["request_id", "row"]).any(), logged[logged.duplicated(["request_id", "row"], keep=False)].head()
    assert set(rows.index) <= set(load.sent), sorted(set(rows.index) - set(load.sent))[:5]  # nothing logged that was not sent
    for request_id, count in load.answered.items():
        assert sorted(rows[request_id]) == list(range(count)), (request_id, rows[request_id])
    for request_id in set(rows.index) - set(load.answered):  # written, but the worker died before the answer left
        assert sorted(rows[request_id]) == list(range(load.sent[request_id])), (request_id, rows[request_id])
    assert set(logged["model_version"]) == {"1"}


def request_ids(file: Path) -> set[str]:
    "The request ids in one process's log file (its whole lines: a killed writer may leave an unfinished last one)."
    text = file.read_text(encoding="utf-8")
    return {json.loads(line)["request_id"] for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()}


class Kept(logging.Handler):
    "The messages logged while it is attached."

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_log_that_cannot_be_written_answers_503(stack, tmp_path):
    from fastapi.testclient import TestClient

    from looplab.deployment import ModelHolder
    from looplab.prediction_log import read_prediction_log
    from looplab.serving import create_app, serving_settings

    settings = serving_settings("test", stack.project)
    blocked = tmp_path / "log"
    blocked.write_text("a file where the log's folder should be")
    settings["prediction_log"] = {**settings["prediction_log"], "path": str(blocked)}
    holder = ModelHolder(MODEL, "champion", cache_dir=settings["cache_dir"], poll_interval=60,
                         tracking=f"sqlite:///{stack.project}/mlflow.db")
    body = {"records": [good_record(stack.project)]}
    kept = Kept()
    logging.getLogger("looplab.prediction_log").addHandler(kept)
    with TestClient(create_app(settings, holder=holder, root=stack.project)) as client:
        try:
            refused = client.post(PREDICT, json=body, headers={"X-Request-ID": "lost-1"})
        finally:
            logging.getLogger("looplab.prediction_log").removeHandler(kept)
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/json", refused.text
        assert "prediction log" in refused.json()["detail"]
        assert any("cannot write 1 rows" in message for message in kept.messages), kept.messages
        blocked.unlink()  # the folder can be made again: the next request is answered and logged
        answered = client.post(PREDICT, json=body, headers={"X-Request-ID": "kept-2"})
        assert answered.status_code == 200 and answered.json()["request_id"] == "kept-2", answered.text
        metrics = client.get("/metrics").text
    assert "looplab_prediction_log_failures_total 1.0" in metrics, metrics
    assert 'looplab_requests_total{method="POST",path="/v1/models/{name}/predict",status="503"} 1.0' in metrics
    assert read_prediction_log(blocked)["request_id"].tolist() == ["kept-2"]
