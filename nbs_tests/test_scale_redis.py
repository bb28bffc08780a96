"""Feast with a Redis online store (conf/prod): the same feature definitions materialised into a real redis-server give the SQLite store's online features; serving looks entities up in Redis, and says so clearly when Redis is down."""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from looplab.core import load_config

from conftest import free_port, project_with_models, stop_process

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
MODEL = "bike-demand"

pytestmark = pytest.mark.skipif(not Path(REDIS).is_file(), reason="redis-server is not installed (make system-packages)")


class RedisServer:
    "A redis-server on 127.0.0.1 with nothing written to disk."

    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--daemonize", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping()
                return self
            except redis.exceptions.ConnectionError:
                assert self.process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def keys(self) -> int:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port).dbsize()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process, timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def prod_online_store(root: Path, port: int) -> dict:
    "conf/prod's Redis online store, at the test's port."
    online = yaml.safe_load((root / "conf" / "prod" / "parameters_data.yml").read_text())["data"]["features"]["online_store"]
    assert online["type"] == "redis"
    return {**online, "connection_string": f"127.0.0.1:{port}"}


def store_params(params: dict, folder: Path, online_store: dict | None) -> dict:
    "`params` with the feature store in `folder`, and the online store replaced when given."
    params = copy.deepcopy(params)
    params["feature_store_path"] = str(folder)
    params["feast_source_path"] = str(folder / "features.parquet")
    if online_store is not None:
        params["features"]["online_store"] = online_store
    else:
        params["features"].pop("online_store", None)
    return params


def three_regions(params: dict, root: Path) -> pd.DataFrame:
    "Validated rows of three regions over three weeks, each with its own counts."
    from looplab.sources import demo_rides
    from looplab.validation import validate_batch

    rides = demo_rides(params, root)
    rides = rides[rides["timestamp"] < "2011-01-22"]
    frames = []
    for number, region in enumerate(("dc", "va", "md")):
        frame = rides.assign(region=region, _source="landing", _batch_id="b1")
        for column in ("casual", "registered"):
            frame[column] = (frame[column] * (1 + number) + number).astype("int64")
        frame["bikers"] = frame["casual"] + frame["registered"]
        frames.append(frame.iloc[: len(frame) - 5 * number])  # the regions end at different hours
    validated, quarantine, report = validate_batch(pd.concat(frames, ignore_index=True), params)
    assert len(quarantine) == 0, report
    return validated


def test_redis_online_features_equal_sqlite(root, tmp_path, redis_server):
    from looplab.features import build_features, materialize_features, online_features

    params = load_config("parameters", root=root)["data"]
    features = build_features(three_regions(params, root), params)
    sqlite = store_params(params, tmp_path / "sqlite", None)
    redis = store_params(params, tmp_path / "redis-store", prod_online_store(root, redis_server.port))
    reports = {name: materialize_features(features, store, root=root) for name, store in (("sqlite", sqlite), ("redis", redis))}
    assert reports["redis"]["online_store"] == "redis" and reports["sqlite"]["online_store"] == "sqlite"
    assert redis_server.keys() == 3, "one Redis hash per entity"
    assert not (tmp_path / "redis-store" / "online_store.db").exists()

    entities = ["va", "dc", "nowhere", "md"]
    from_sqlite, from_redis = online_features(entities, sqlite, root=root), online_features(entities, redis, root=root)
    pd.testing.assert_frame_equal(from_redis, from_sqlite)
    assert from_redis["event_timestamp"].notna().tolist() == [True, True, False, True]
    latest = features.groupby("region")["event_timestamp"].max()
    assert from_redis.set_index("region").loc[["dc", "va", "md"], "event_timestamp"].tolist() == latest.loc[["dc", "va", "md"]].tolist()
    assert not np.allclose(from_redis.loc[0, "bikers_lag_24h"], from_redis.loc[1, "bikers_lag_24h"])  # each entity its own values


def test_serving_looks_entities_up_in_redis(root, tmp_path, tool, quiet_env, redis_server):
    "Entity records resolved from Redis; Redis down: full records still answered, entity lookups a 503 naming the store."
    from fastapi.testclient import TestClient

    from looplab.features import materialize_features
    from looplab.serving import create_app, serving_settings

    project = project_with_models(root, tmp_path / "project", tool, quiet_env)
    params = load_config("parameters", env="test", root=project)["data"]
    redis = store_params(params, project / "data" / "04_feature" / "feast-redis", prod_online_store(root, redis_server.port))
    features_path = project / "data" / "04_feature" / "features.parquet"
    features = pd.read_parquet(sorted(features_path.iterdir())[-1] / features_path.name)
    materialize_features(features, redis, root=project)

    settings = serving_settings("test", project)
    settings["prediction_log"] = {**settings["prediction_log"], "path": None}
    names = load_config("parameters", env="test", root=project)["training"]["features"]
    full = features[names].tail(1).to_dict("records")
    with TestClient(create_app(settings, data_params=redis, root=project, env="test")) as http:
        by_entity = http.post(f"/v1/models/{MODEL}/predict", json={"records": [{"region": "dc"}]})
        by_record = http.post(f"/v1/models/{MODEL}/predict", json={"records": full})
        assert by_entity.status_code == 200 and by_record.status_code == 200, (by_entity.text, by_record.text)
        # the newest feature row is what Redis serves for dc
        assert by_entity.json()["predictions"] == pytest.approx(by_record.json()["predictions"])
        unknown = http.post(f"/v1/models/{MODEL}/predict", json={"records": [{"region": "atlantis"}]})
        assert unknown.status_code == 422 and "atlantis" in unknown.text

        redis_server.stop()
        down = http.post(f"/v1/models/{MODEL}/predict", json={"records": [{"region": "dc"}]})
        assert down.status_code == 503, down.text
        detail = down.json()["detail"]
        assert "online store redis" in detail and f"127.0.0.1:{redis_server.port}" in detail and "unreachable" in detail, detail
        assert http.post(f"/v1/models/{MODEL}/predict", json={"records": full}).status_code == 200  # full records need no store
