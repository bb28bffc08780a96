"""looplab.sources against real failure modes: a local HTTP API that pages, fails and stalls; broken
databases; landing files that are empty, cut short or wrongly encoded; the demo seeding on the real file."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
import sqlalchemy as sa

from looplab.sources import (
    FileSource,
    HttpSource,
    SourceError,
    SqlSource,
    make_source,
    replay_day,
    seed_demo_sources,
)

from conftest import free_port

# --- a local HTTP API -----------------------------------------------------------------------------

Route = Callable[[dict, int], tuple[int, object, float]]  # (query, hit number) -> (status, JSON body, delay s)


class Api:
    "A JSON API on 127.0.0.1 whose answers the test scripts per path; counts the hits on each path."

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.hits: Counter = Counter()
        self.queries: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parsed = urlparse(self.path)
                api.hits[parsed.path] += 1
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                api.queries.append(query)
                route = api.routes.get(parsed.path)
                status, body, delay = route(query, api.hits[parsed.path]) if route else (404, {"error": "no such path"}, 0)
                if delay:
                    api.stop.wait(delay)  # returns at once when the server shuts down
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def api():
    server = Api()
    yield server
    server.close()


def source(api: Api, path: str = "/v1/rides", **settings) -> HttpSource:
    return HttpSource("api", api.url(path), **{"timeout_seconds": 2, "retries": 3, "backoff_seconds": 0.01, **settings})


def records(hours: range, day: str = "2011-03-01") -> list[dict]:
    return [{"timestamp": f"{day}T{h:02d}:00:00-05:00", "hr": h, "bikers": 10 + h} for h in hours]


def paged(query: dict, hit: int) -> tuple[int, object, float]:
    "Three pages of three records; the next page as a token."
    page = int(query.get("page", "1"))
    return 200, {"records": records(range(3 * (page - 1), 3 * page)), "next": page + 1 if page < 3 else None}, 0


def test_http_pagination_across_three_pages_sends_the_watermark(api):
    api.routes["/v1/rides"] = paged
    batch = source(api).read("2011-02-28T23:00:00-05:00")
    assert batch.rows == 9
    assert list(batch.frame["hr"]) == list(range(9))
    assert batch.watermark == "2011-03-01T08:00:00-05:00"
    assert [q.get("page") for q in api.queries] == [None, "2", "3"]
    assert all(q["since"] == "2011-02-28T23:00:00-05:00" for q in api.queries), api.queries


def test_http_pagination_by_next_url(api):
    def linked(query, hit):
        page = int(query.get("p", "1"))
        following = f"/v1/rides?p={page + 1}" if page < 3 else None
        return 200, {"items": records(range(page, page + 1)), "more": following}, 0

    api.routes["/v1/rides"] = linked
    batch = source(api, records_field="items", next_field="more").read()
    assert list(batch.frame["hr"]) == [1, 2, 3]
    assert api.hits["/v1/rides"] == 3


def test_http_500_recovers_after_retries(api):
    api.routes["/v1/rides"] = lambda q, hit: (500, {"error": "busy"}, 0) if hit <= 2 else paged({"page": "3"}, hit)
    batch = source(api, retries=3).read()
    assert batch.rows == 3
    assert api.hits["/v1/rides"] == 3


def test_http_500_that_never_recovers_is_a_clear_error_after_retries(api):
    api.routes["/v1/rides"] = lambda q, hit: (500, {"error": "down"}, 0)
    with pytest.raises(SourceError) as raised:
        source(api, retries=3).read()
    message = str(raised.value)
    assert message.startswith("source 'api': GET http://127.0.0.1:"), message
    assert "failed after 3 attempt(s): HTTP 500" in message
    assert "\n" not in message
    assert api.hits["/v1/rides"] == 3


def test_http_timeout_is_retried_then_a_clear_error(api):
    api.routes["/v1/rides"] = lambda q, hit: (200, {"records": []}, 2.0)  # answers long after the timeout
    with pytest.raises(SourceError, match=r"failed after 2 attempt\(s\): no answer within 0.3 s \(timeout\)"):
        source(api, timeout_seconds=0.3, retries=2).read()
    assert api.hits["/v1/rides"] == 2


def test_http_timeout_then_recovery(api):
    api.routes["/v1/rides"] = lambda q, hit: (200, {"records": records(range(2))}, 2.0 if hit == 1 else 0)
    assert source(api, timeout_seconds=0.3, retries=2).read().rows == 2


def test_http_404_is_not_retried(api):
    with pytest.raises(SourceError, match=r"answered HTTP 404 Not Found; not retried") as raised:
        source(api, path="/v1/nowhere").read()
    assert "source 'api'" in str(raised.value)
    assert api.hits["/v1/nowhere"] == 1


def test_http_unreachable_server_is_retried_then_a_clear_error():
    closed = HttpSource("api", f"http://127.0.0.1:{free_port()}/v1/rides", timeout_seconds=1, retries=2, backoff_seconds=0.01)
    with pytest.raises(SourceError, match=r"source 'api': .* failed after 2 attempt\(s\): connection failed"):
        closed.read()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>busy</html>", "did not answer JSON"),
        ({"rows": []}, "has no 'records' field (found: rows)"),
        ({"records": [1, 2]}, "'records' must be a list of JSON objects"),
        ({"records": records(range(1)), "next": 1}, "points back to a page already read"),
    ],
)
def test_http_malformed_answers_are_clear_errors(api, body, expected):
    api.routes["/v1/rides"] = lambda q, hit: (200, body, 0)
    with pytest.raises(SourceError, match="source 'api': ") as raised:
        source(api).read()
    assert expected in str(raised.value)


def test_http_empty_answer_has_no_watermark(api):
    api.routes["/v1/rides"] = lambda q, hit: (200, {"records": [], "next": None}, 0)
    batch = source(api).read("2011-03-01T00:00:00Z")
    assert (batch.rows, batch.watermark) == (0, None)


# --- SQL ------------------------------------------------------------------------------------------

@pytest.fixture
def database(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'operational.db'}"
    engine = sa.create_engine(url)
    pd.DataFrame({"timestamp": [f"2011-01-01 {h:02d}:00:00" for h in range(5)], "bikers": range(5)}).to_sql("rides", engine, index=False)
    engine.dispose()
    return url


def test_sql_reads_incrementally_from_the_watermark(database):
    source = SqlSource("history", database, "rides")
    first = source.read()
    assert (first.rows, first.watermark) == (5, "2011-01-01 04:00:00")
    engine = sa.create_engine(database)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO rides VALUES ('2011-01-01 05:00:00', 5)"))
    engine.dispose()
    later = source.read(first.watermark)
    assert list(later.frame["bikers"]) == [5]
    assert later.watermark == "2011-01-01 05:00:00"


@pytest.mark.parametrize(
    ("url", "table", "expected"),
    [
        ("sqlite:///{tmp}/no/such/folder/operational.db", "rides", "is unreachable: the file"),
        ("sqlite:///{tmp}/absent.db", "rides", "is unreachable: the file"),
        ("not-a-url", "rides", "bad database URL 'not-a-url'"),
        ("nosuchdialect://user:secret@host/db", "rides", "cannot use database nosuchdialect://user:***@host/db"),
        ("postgresql://user:secret@127.0.0.1:1/db", "rides", "postgresql://user:***@127.0.0.1:1/db"),
        ("{database}", "trips", "table 'trips' does not exist in sqlite:///"),
    ],
)
def test_sql_bad_databases_are_clear_errors(tmp_path, database, url, table, expected):
    source = SqlSource("history", url.format(tmp=tmp_path, database=database), table)
    with pytest.raises(SourceError) as raised:
        source.read()
    message = str(raised.value)
    assert message.startswith("source 'history': ") and expected in message, message
    assert "secret" not in message and "\n" not in message
    assert not (tmp_path / "absent.db").exists(), "reading must not create a database"


def test_sql_missing_timestamp_column(database):
    with pytest.raises(SourceError, match="has no timestamp column 'ts'"):
        SqlSource("history", database, "rides", "ts").read()


# --- landing files --------------------------------------------------------------------------------

GOOD_CSV = "timestamp,hr,bikers\n2011-03-01 00:00:00,0,5\n2011-03-01 01:00:00,1,10\n2011-03-01 02:00:00,2,15\n"


def landing_error(folder: Path, name: str, content: bytes, patterns=("*.csv", "*.parquet")) -> str:
    (folder / name).write_bytes(content)
    with pytest.raises(SourceError) as raised:
        FileSource("landing", folder, list(patterns), on_bad_file="fail").read()
    message = str(raised.value)
    assert message.startswith("source 'landing': ") and name in message and "\n" not in message, message
    return message


def test_a_file_that_cannot_be_read_is_moved_aside_and_the_rest_is_read(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "rides_2011-03-01.csv").write_text(GOOD_CSV)
    (landing / "rides_2011-03-02.csv").write_bytes(GOOD_CSV.encode()[:-5])       # truncated
    (landing / "rides_2011-03-03.csv").write_bytes(GOOD_CSV.encode("utf-16"))    # another encoding
    (landing / "rides_2011-03-04.parquet").write_bytes(b"PAR1 not really")      # corrupt Parquet
    batch = FileSource("landing", landing).read()
    assert batch.rows == 3 and [entry.split("@")[0] for entry in batch.files] == ["rides_2011-03-01.csv"]
    reasons = {record["file"]: record["reason"] for record in batch.rejected}
    assert "truncated or malformed" in reasons["rides_2011-03-02.csv"] and "UTF-16" in reasons["rides_2011-03-03.csv"]
    assert "not a readable Parquet file" in reasons["rides_2011-03-04.parquet"]
    for name in reasons:
        assert (tmp_path / "rejected" / name).is_file() and (tmp_path / "rejected" / f"{name}.reason.json").is_file()
    assert [path.name for path in landing.iterdir()] == ["rides_2011-03-01.csv"]
    # fixed and put back, the file is read; a second rejection of the same name keeps both copies
    (landing / "rides_2011-03-02.csv").write_text(GOOD_CSV.replace("2011-03-01", "2011-03-02"))
    again = FileSource("landing", landing).read(taken_files=set(batch.files))
    assert again.rows == 3 and not again.rejected
    (landing / "rides_2011-03-05.csv").write_bytes(b"")
    (landing / "rides_2011-03-02.csv").rename(landing / "rides_2011-03-02.csv.done")  # (ignored: matches no pattern)
    FileSource("landing", landing).read(taken_files=set(batch.files))
    (landing / "rides_2011-03-05.csv").write_bytes(b"")
    FileSource("landing", landing).read(taken_files=set(batch.files))
    assert len(list((tmp_path / "rejected").glob("rides_2011-03-05*.csv"))) == 2


def test_empty_landing_file(tmp_path):
    assert "is empty (0 bytes)" in landing_error(tmp_path, "rides_2011-03-01.csv", b"")
    (tmp_path / "rides_2011-03-01.csv").unlink()
    assert "is empty (0 bytes)" in landing_error(tmp_path, "rides_2011-03-02.parquet", b"")


def test_truncated_csv_names_the_line(tmp_path):
    message = landing_error(tmp_path, "rides.csv", GOOD_CSV.encode()[:-5])
    assert "line 4 has 2 field(s) where the header has 3: the file is truncated or malformed" in message


def test_truncated_csv_inside_a_quoted_field(tmp_path):
    message = landing_error(tmp_path, "rides.csv", GOOD_CSV.replace("\n2011-03-01 02", '\n"2011-03-01 02').encode()[:-3])
    assert "line 4: unexpected end of data" in message


def test_utf16_csv_is_refused(tmp_path):
    assert "is UTF-16 text (byte-order mark)" in landing_error(tmp_path, "rides.csv", GOOD_CSV.encode("utf-16"))


def test_invalid_utf8_bytes_name_the_line(tmp_path):
    content = GOOD_CSV.replace("2011-03-01 01:00:00", "2011-03-01 01:00:00\xa0").encode("latin-1")
    assert "is not UTF-8 text: byte 0xa0 on line 3" in landing_error(tmp_path, "rides.csv", content)


def test_utf8_with_byte_order_mark_is_accepted(tmp_path):
    (tmp_path / "rides.csv").write_bytes(GOOD_CSV.encode("utf-8-sig"))
    batch = FileSource("landing", tmp_path).read()
    assert list(batch.frame.columns[:3]) == ["timestamp", "hr", "bikers"] and batch.rows == 3


def test_parquet_named_file_that_is_not_parquet(tmp_path):
    assert "is not a readable Parquet file" in landing_error(tmp_path, "rides.parquet", GOOD_CSV.encode())


def test_files_matching_no_pattern_are_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "rides.csv").write_text(GOOD_CSV)
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / ".rides.csv.partial").write_text("half a fi")  # a writer's temporary file: not looked at
    with caplog.at_level(logging.WARNING, logger="looplab.sources"):
        batch = FileSource("landing", tmp_path).read()
    assert batch.rows == 3 and [entry.split("@")[0] for entry in batch.files] == ["rides.csv"]
    assert "ignoring 2 file(s)" in caplog.text and "image.png, notes.txt" in caplog.text


def test_a_pattern_without_a_reader_is_refused(tmp_path):
    assert "no reader for '.txt'" in landing_error(tmp_path, "notes.txt", b"x", patterns=["*.txt"])


def test_pattern_match_ignores_case_and_parquet_is_read(tmp_path):
    (tmp_path / "RIDES.CSV").write_text(GOOD_CSV)
    pd.read_csv(tmp_path / "RIDES.CSV").to_parquet(tmp_path / "more.parquet")
    batch = FileSource("landing", tmp_path).read()
    assert batch.rows == 6
    assert batch.frame["_line"].tolist()[:3] == [2, 3, 4] and batch.frame["_line"][3:].isna().all()


def test_files_are_taken_once_by_name_and_content(tmp_path):
    (tmp_path / "rides.csv").write_text(GOOD_CSV)
    source = FileSource("landing", tmp_path)
    first = source.read()
    assert source.read(taken_files=set(first.files)).rows == 0
    (tmp_path / "rides.csv").write_text(GOOD_CSV + "2011-03-01 03:00:00,3,20\n")
    assert source.read(taken_files=set(first.files)).rows == 4


# --- settings and the demo ------------------------------------------------------------------------

def test_make_source_resolves_relative_paths_against_the_root(tmp_path):
    sql = make_source("history", {"kind": "sql", "url": "sqlite:///data/x.db", "table": "rides", "timestamp_column": "ts"}, root=tmp_path)
    files = make_source("landing", {"kind": "files", "path": "data/landing", "patterns": "*.csv"}, root=tmp_path)
    assert sql.url == f"sqlite:///{tmp_path}/data/x.db"
    assert files.path == tmp_path / "data" / "landing" and files.patterns == ["*.csv"]
    http = make_source("api", {"kind": "http", "enabled": False, "url": "http://127.0.0.1:1/x", "retries": 5})
    assert (http.retries, http.backoff_seconds) == (5, 0.5)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"kind": "kafka"}, "unknown kind 'kafka'"),
        ({"kind": "files"}, "needs the setting(s) path"),
        ({"kind": "http", "url": "http://x", "retry": 2}, "unknown setting(s) retry for a http source"),
    ],
)
def test_make_source_refuses_bad_settings(settings, expected):
    with pytest.raises(SourceError, match="source 's': ") as raised:
        make_source("s", settings)
    assert expected in str(raised.value)


@pytest.fixture
def demo_params(root, tmp_path) -> dict:
    from looplab.core import load_config

    params = json.loads(json.dumps(load_config(root=root)["data"]))
    params["sources"]["history"]["url"] = "sqlite:///data/01_raw/operational.db"  # relative: resolved against `root`
    params["sources"]["landing"]["path"] = "data/01_raw/landing"
    params["demo"]["raw_csv"] = str(root / "data" / "01_raw" / "Bikeshare.csv")
    return params


def test_seed_demo_sources_on_the_real_file_is_idempotent(demo_params, tmp_path):
    first = seed_demo_sources(demo_params, root=tmp_path)
    assert first["created"] and first["history_rows"] == 1337
    landing = tmp_path / "data" / "01_raw" / "landing"
    assert sorted(p.name for p in landing.iterdir()) == first["landing_files"]
    assert len(first["landing_files"]) == demo_params["demo"]["landing_days"]
    contents = {p.name: p.read_bytes() for p in landing.iterdir()}

    second = seed_demo_sources(demo_params, root=tmp_path)
    assert not second["created"]
    assert (second["history_rows"], second["landing_files"]) == (first["history_rows"], first["landing_files"])
    assert {p.name: p.read_bytes() for p in landing.iterdir()} == contents

    rides = pd.concat([pd.read_csv(landing / name) for name in first["landing_files"]])
    assert rides["timestamp"].min() == "2011-03-01 00:00:00" and rides["timestamp"].max() < "2011-03-15"
    assert "mnth" not in rides.columns and "day" not in rides.columns


def test_seed_demo_sources_disabled_does_nothing(demo_params, tmp_path):
    demo_params["demo"]["enabled"] = False
    assert seed_demo_sources(demo_params, root=tmp_path)["created"] is False
    assert not (tmp_path / "data").exists()


def test_replay_day_writes_one_later_day(demo_params, tmp_path):
    path = replay_day(demo_params, "2011-08-01", root=tmp_path)
    day = pd.read_csv(path)
    assert path.name == "rides_2011-08-01.csv" and day["timestamp"].str.startswith("2011-08-01").all() and len(day) == 24
    assert replay_day(demo_params, "2011-08-01", root=tmp_path) == path
    with pytest.raises(ValueError, match="no demo data for 2010-12-31"):
        replay_day(demo_params, "2010-12-31", root=tmp_path)
