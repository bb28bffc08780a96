"""The serving benchmark: the same registered model served by `mlflow models serve` and by looplab through nginx.

Set-up (not timed): a temporary project copy, `kedro run -p data --env test` and `kedro run -p
training --env test`, so `bike-demand` version 1 is the champion in the copy's own store. Then, one
after the other, on 127.0.0.1 and under the same load generator (wrk, 2 threads, 16 connections,
one-row JSON POSTs, DURATION seconds each, default 15):

- mlflow (the anchor): `mlflow models serve -m models:/bike-demand@champion -w 2 --env-manager local`,
  body `{"dataframe_records": [row]}` at /invocations;
- BentoML (the second anchor, benchmarks/bentoml/service.py in its own environment built by
  benchmarks/bentoml/setup.sh): `bentoml serve service:BikeDemand`, 2 workers, adaptive batching over a
  batchable API taking a list of records, one OpenMP thread per worker, no access log; the champion
  re-written with skops by looplab's environment and loaded with the registry's trusted types; body
  `{"records": [row]}` at /predict. Its answer must equal the champion's prediction. A failed anchor is
  reported in its row (`{"failed": reason}`) and the other rows still run;
- looplab: `looplab serve --workers 2` behind `looplab gateway` (nginx), body `{"records": [row]}`
  at /v1/models/bike-demand/predict; the gateway's rate limit raised out of the way and its body
  limit raised for the batch test.

Then the batch test: N sequential POSTs of 10,000 rows to looplab through the gateway, rows/s —
once as records (`{"records": [...]}`) and once column-wise (`{"columns": {...}}`, the form for
large batches: a third of the bytes).
Right after looplab's first worker alone (no nginx), the HTTP ceiling under the same load: a bare
ASGI app that parses the JSON body and sends it back (benchmarks/serving/echo.py), on one uvicorn
worker started as looplab's are (httptools, uvloop, no access log), same body. uvicorn's own protocol,
not the workers' (which adds read timeouts, about 10 % of an echo's time, and sends each answer in one
write): the ceiling is the stock server's.
Last, the same load through the gateway over `looplab serve --workers 1` (on a 2-core machine one
worker, with batches twice as large, can beat two).
Targets: looplab rps ≥ 10 × mlflow's; looplab p99 ≤ 25 ms; looplab rps ≥ 20 × BentoML's with
looplab's p99 ≤ 10 ms; batches ≥ 500,000 rows/s as records, ≥ 800,000 as columns; looplab's one worker without nginx ≥ 90 % of the echo's rps.

    .venv/bin/python benchmarks/serving/run.py                 # 15 s per server
    DURATION=5 .venv/bin/python benchmarks/serving/run.py --out /tmp/serving.json

Progress goes to standard error; the last line on standard output is the one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for the shared helpers
from common import copy_project, machine, say, write_result  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "serving.json"
BIN = Path(sys.executable).parent
BENTOML = ROOT / "benchmarks" / "bentoml"  # BentoML's own environment (setup.sh) and the service it serves
WRK = shutil.which("wrk") or "/usr/bin/wrk"
# The gateway is measured as it is configured by default: every request carries an API key it checks.
API_KEY = "bench-key-0123456789abcdef"
HEADERS = {"Content-Type": "application/json", "X-API-Key": API_KEY}
MODEL = "bike-demand"
RPS_RATIO_MIN = 10.0
P99_MAX_MS = 25.0
BENTOML_RATIO_MIN = 20.0  # looplab through the gateway against BentoML, with looplab's p99 at most BENTOML_P99_MAX_MS
BENTOML_P99_MAX_MS = 10.0
BATCH_ROWS_PER_S_MIN = {"records": 500_000, "columns": 800_000}  # 10,000-row requests through the gateway, by body form
BATCH_ROWS = 10_000
ECHO_SHARE_MIN = 0.90


def child_env(project: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("LOOPLAB_PROJECT_ROOT", "KEDRO_ENV")}
    # `mlflow models serve` runs `uvicorn` by name: the environment's bin must come first on PATH.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "KEDRO_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
            "LOOPLAB_PROJECT_ROOT": str(project), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not {port, port + 1} & taken:
            taken.update({port, port + 1})
            return port


def run(command: list[str], project: Path, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as output:
        done = subprocess.run(command, cwd=project, env=child_env(project), stdout=output, stderr=subprocess.STDOUT,
                              timeout=900, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        raise SystemExit(f"bench-serving: {' '.join(command)} failed (exit {done.returncode}):\n{tail}")
    return time.perf_counter() - started


def start(command: list[str], project: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    output = log.open("w", encoding="utf-8")
    environment = {key: value for key, value in {**child_env(project), **(env or {})}.items() if value is not None}  # None: unset
    return subprocess.Popen(command, cwd=project, env=environment, stdout=output,
                            stderr=subprocess.STDOUT, start_new_session=True)


def descendants(pid: int) -> list[int]:
    "The processes `pid` started, and theirs (BentoML puts each worker in a session of its own)."
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    "Stop a server and everything it started (its own process group, and any descendant that left it)."
    if process.poll() is not None:
        return
    started = descendants(process.pid)
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    for pid in started:  # a worker its parent did not take down with it
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def post(url: str, body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, data=body, headers=HEADERS, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_ready(url: str, body: bytes, process: subprocess.Popen, log: Path, seconds: float = 180) -> bytes:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench-serving: server exited ({process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
        status, answer = post(url, body, timeout=5)
        if status == 200:
            return answer
        time.sleep(0.5)
    raise SystemExit(f"bench-serving: {url} did not answer 200 within {seconds:.0f} s; see {log}:\n{log.read_text()[-3000:]}")


def records(project: Path, rows: int) -> list[dict]:
    "`rows` feature rows of the evaluation set (repeated when it is shorter), as JSON-ready dictionaries."
    sys.path.insert(0, str(project / "src"))
    from looplab.core import load_config
    from looplab.versioning import load_version
    features = load_config(env="test", root=project)["training"]["features"]
    # complete rows only: looplab's schema refuses null lags (JSON has no NaN), mlflow's accepts them
    frame = load_version(project / "data" / "05_model_input" / "evaluation_set.parquet")[features].dropna()
    repeated = frame.sample(n=rows, replace=len(frame) < rows, random_state=0) if rows > 1 else frame.iloc[:1]
    return json.loads(repeated.to_json(orient="records", date_format="iso"))


def export_for_bentoml(project: Path, folder: Path, one: list[dict]) -> list[float]:
    """The champion as BentoML's anchor loads it: the pipeline looplab's registry loads (skops, its trusted types),
    written again with skops into `folder` beside the trusted types and the feature order; returns its predictions
    for `one`, computed here the way the service computes them, to check the anchor serves the same model."""
    import mlflow
    import pandas as pd
    import skops.io

    from looplab.core import load_config
    from looplab.registry import SKOPS_TRUSTED_TYPES, load_model
    model = load_model(MODEL, "champion", mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"))
    features = load_config(env="test", root=project)["training"]["features"]
    folder.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, folder / "model.skops")
    (folder / "trusted.json").write_text(json.dumps(SKOPS_TRUSTED_TYPES), encoding="utf-8")
    (folder / "features.json").write_text(json.dumps(features), encoding="utf-8")
    return model.predict(pd.DataFrame.from_records(one, columns=features)).tolist()


def bentoml_anchor(project: Path, work: Path, one: list[dict], port: int, args: argparse.Namespace) -> dict:
    """The champion behind BentoML (benchmarks/bentoml/service.py, in benchmarks/bentoml/.venv built by setup.sh),
    under the same wrk load and with looplab's single-record body; raises SystemExit with the reason when it fails."""
    say("[bentoml] its environment (benchmarks/bentoml/setup.sh)")
    built = subprocess.run(["sh", str(BENTOML / "setup.sh")], capture_output=True, text=True, timeout=900, check=False)
    if built.returncode != 0:
        raise SystemExit(f"benchmarks/bentoml/setup.sh failed (exit {built.returncode}): {(built.stdout + built.stderr)[-1500:]}")
    python = BENTOML / ".venv" / "bin" / "python"
    versions = json.loads(subprocess.run(
        [str(python), "-c", "import json, bentoml, sklearn, skops, numpy; print(json.dumps({'bentoml': bentoml.__version__, "
         "'scikit-learn': sklearn.__version__, 'skops': skops.__version__, 'numpy': numpy.__version__}))"],
        capture_output=True, text=True, timeout=120, check=True).stdout)
    from importlib import metadata
    if versions["scikit-learn"] != metadata.version("scikit-learn"):
        raise SystemExit(f"BentoML's environment has scikit-learn {versions['scikit-learn']}, looplab's "
                         f"{metadata.version('scikit-learn')}: pin the lock's version in benchmarks/bentoml/requirements.txt")
    folder = work / "bentoml-model"
    expected = export_for_bentoml(project, folder, one)
    say(f"[bentoml] bentoml serve service:BikeDemand (2 workers, adaptive batching) on 127.0.0.1:{port}")
    environment = {"PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}", "BENCH_BENTOML_MODEL": str(folder),
                   "OMP_NUM_THREADS": "1", "BENTOML_HOME": str(work / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "true"}
    log = work / "bentoml.log"
    server = start([str(python.parent / "bentoml"), "serve", "service:BikeDemand", "--working-dir", str(BENTOML),
                    "--host", "127.0.0.1", "--port", str(port)], project, log, {**environment, "PYTHONPATH": None})
    try:
        url = f"http://127.0.0.1:{port}/predict"
        body = json.dumps({"records": one}).encode()
        answer = json.loads(wait_ready(url, body, server, log, seconds=120))
        if len(answer) != len(expected) or any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(answer, expected, strict=True)):
            raise SystemExit(f"BentoML answered {answer}, the champion predicts {expected}: not the same model")
        say(f"[bentoml] ready, the champion's prediction {answer}; warm-up 2 s, then wrk {args.duration} s")
        wrk(url, body, work, "bentoml-warmup", 2, args.threads, args.connections)
        figures = wrk(url, body, work, "bentoml", args.duration, args.threads, args.connections)
    finally:
        stop(server)
    return {**figures, "prediction": answer, "versions": versions}


def ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, body: bytes, work: Path, name: str, duration: int, threads: int, connections: int) -> dict:
    script = work / f"{name}.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["X-API-Key"] = "{API_KEY}"\n'
                      f"wrk.body = {json.dumps(body.decode())}\n", encoding="utf-8")
    command = [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    (work / f"{name}.wrk.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise SystemExit(f"bench-serving: wrk failed on {url}:\n{done.stdout}\n{done.stderr}")
    text = done.stdout
    percentiles = {f"p{p}_ms": ms(v, u) for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)), **percentiles,
            "requests": int(total.group(1)) if total else None, "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, socket_errors.groups()), strict=True))
            if socket_errors else None, "command": " ".join(command[:-3] + [script.name, url])}


def batch(url: str, body: bytes, count: int) -> dict:
    "Sequential POSTs of a 10,000-row body: per-request seconds and rows/s."
    import http.client
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    times = []
    try:
        for _ in range(count + 1):  # the first is a warm-up
            started = time.perf_counter()
            connection.request("POST", path, body=body, headers=HEADERS)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise SystemExit(f"bench-serving: the batch request failed ({response.status}): {answer[:500]!r}")
            times.append(time.perf_counter() - started)
    finally:
        connection.close()
    times = times[1:]
    times.sort()
    median = times[len(times) // 2]
    return {"requests": count, "rows_per_request": BATCH_ROWS, "body_bytes": len(body), "median_s": median,
            "min_s": times[0], "max_s": times[-1], "rows_per_second": BATCH_ROWS / median,
            "rows_per_second_overall": BATCH_ROWS * count / sum(times)}


def machine_facts() -> dict:
    "The shared machine facts, plus the nginx and wrk versions."
    nginx = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
    wrk_version = subprocess.run([WRK, "-v"], capture_output=True, text=True, check=False).stdout.splitlines()[:1]
    return {**machine(("mlflow", "scikit-learn", "skops", "fastapi", "uvicorn", "pandas")),
            "nginx": nginx, "wrk": wrk_version[0] if wrk_version else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=int(os.environ.get("DURATION", "15")),
                        help="seconds of load per server (default: $DURATION or 15)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20, help="timed 10,000-row requests (default 20)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep", action="store_true", help="keep the temporary project and the logs")
    args = parser.parse_args(argv)
    if not os.path.exists(WRK):
        raise SystemExit("bench-serving: wrk is missing (make bench-serving installs it as root: apt-get install wrk)")
    if not os.path.exists("/usr/sbin/nginx"):
        raise SystemExit("bench-serving: nginx is missing: run make system-packages")

    info = machine_facts()
    temp = Path(tempfile.mkdtemp(prefix="looplab-bench-serving-"))
    run_dir = Path(tempfile.mkdtemp(prefix="looplab-bench-gateway-"))
    os.chmod(run_dir, 0o755)  # nginx's workers run as an unprivileged user, who must be able to enter it
    processes: list[subprocess.Popen] = []
    results: dict = {}
    try:
        project, work = copy_project(temp / "project"), temp / "work"
        work.mkdir()
        say(f"[setup] project copy in {project}; kedro run -p data / -p training (--env test)")
        setup_s = run([str(BIN / "kedro"), "run", "-p", "data", "--env", "test"], project, work / "data.log")
        setup_s += run([str(BIN / "kedro"), "run", "-p", "training", "--env", "test"], project, work / "training.log")
        say(f"[setup] champion registered in {setup_s:.1f} s")
        one = records(project, 1)
        big = records(project, BATCH_ROWS)
        taken: set[int] = set()
        mlflow_port, serving_port, gateway_port, echo_port = free_port(taken), free_port(taken), free_port(taken), free_port(taken)
        bentoml_port = free_port(taken)

        # mlflow models serve: the anchor
        say(f"[mlflow] mlflow models serve -w 2 --env-manager local on :{mlflow_port}")
        mlflow = start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion", "-w", "2",
                        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)], project, work / "mlflow.log")
        processes.append(mlflow)
        mlflow_url = f"http://127.0.0.1:{mlflow_port}/invocations"
        mlflow_body = json.dumps({"dataframe_records": one}).encode()
        mlflow_answer = wait_ready(mlflow_url, mlflow_body, mlflow, work / "mlflow.log")
        say(f"[mlflow] ready: {mlflow_answer[:120]!r}; wrk {args.duration} s")
        results["mlflow"] = wrk(mlflow_url, mlflow_body, work, "mlflow", args.duration, args.threads, args.connections)
        say(f"[mlflow] {results['mlflow']['rps']:.0f} rps, p50 {results['mlflow'].get('p50_ms')} ms, p99 {results['mlflow'].get('p99_ms')} ms")
        stop(mlflow)

        # BentoML, the second anchor: a failure is reported in its row and the other rows still run
        try:
            results["bentoml"] = bentoml_anchor(project, work, one, bentoml_port, args)
            say(f"[bentoml] {results['bentoml']['rps']:.0f} rps, p50 {results['bentoml'].get('p50_ms')} ms, "
                f"p99 {results['bentoml'].get('p99_ms')} ms")
        except (SystemExit, Exception) as error:  # noqa: BLE001 - any failure of the anchor is its row's result
            results["bentoml"] = {"failed": str(error)[-3000:]}
            say(f"[bentoml] failed: {error}")

        # looplab serve + gateway
        (project / "conf" / "local" / "serving.yml").write_text(f"serving:\n  port: {serving_port}\n  workers: 2\n")
        (project / "conf" / "local" / "gateway.yml").write_text(
            f"gateway:\n  listen: 127.0.0.1:{gateway_port}\n  run_dir: {run_dir}\n  max_body_size: 16m\n  body_buffer_size: 16m\n"
            f"  api_keys: [{API_KEY}]\n"
            "  rate_limit:\n    requests_per_second: 1000000\n    burst: 100000\n")
        say(f"[looplab] looplab serve --workers 2 on :{serving_port}+i, looplab gateway on :{gateway_port}")
        serve = start([str(BIN / "looplab"), "serve", "--workers", "2"], project, work / "serve.log")
        processes.append(serve)
        gateway = start([str(BIN / "looplab"), "gateway"], project, work / "gateway.log")
        processes.append(gateway)
        looplab_url = f"http://127.0.0.1:{gateway_port}/v1/models/{MODEL}/predict"
        looplab_body = json.dumps({"records": one}).encode()
        looplab_answer = wait_ready(looplab_url, looplab_body, serve, work / "serve.log")
        say(f"[looplab] ready: {looplab_answer[:120]!r}; warm-up 2 s, then wrk {args.duration} s")
        wrk(looplab_url, looplab_body, work, "looplab-warmup", 2, args.threads, args.connections)
        results["looplab"] = wrk(looplab_url, looplab_body, work, "looplab", args.duration, args.threads, args.connections)
        say(f"[looplab] {results['looplab']['rps']:.0f} rps, p50 {results['looplab'].get('p50_ms')} ms, p99 {results['looplab'].get('p99_ms')} ms")
        # the same load on the first worker alone, without nginx: where the time goes
        direct_url = f"http://127.0.0.1:{serving_port}/v1/models/{MODEL}/predict"
        results["looplab_worker_direct"] = wrk(direct_url, looplab_body, work, "looplab-direct", args.duration, args.threads, args.connections)
        say(f"[looplab, one worker, no nginx] {results['looplab_worker_direct']['rps']:.0f} rps, "
            f"p50 {results['looplab_worker_direct'].get('p50_ms')} ms, p99 {results['looplab_worker_direct'].get('p99_ms')} ms")
        # the HTTP ceiling, right after it: a bare ASGI JSON echo on one uvicorn worker started as looplab's are
        say(f"[echo] bare ASGI JSON echo, one uvicorn worker on :{echo_port}")
        echo = start([str(BIN / "python"), "-m", "uvicorn", "echo:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
                      "--port", str(echo_port), "--no-access-log", "--http", "httptools", "--timeout-keep-alive", "30"],
                     project, work / "echo.log")
        processes.append(echo)
        echo_url = f"http://127.0.0.1:{echo_port}/v1/models/{MODEL}/predict"
        wait_ready(echo_url, looplab_body, echo, work / "echo.log")
        wrk(echo_url, looplab_body, work, "echo-warmup", 2, args.threads, args.connections)
        results["echo"] = wrk(echo_url, looplab_body, work, "echo", args.duration, args.threads, args.connections)
        stop(echo)
        say(f"[echo] {results['echo']['rps']:.0f} rps, p50 {results['echo'].get('p50_ms')} ms, p99 {results['echo'].get('p99_ms')} ms; "
            f"looplab's worker at {results['looplab_worker_direct']['rps'] / results['echo']['rps']:.0%} of it")
        say(f"[batch] {args.batches} × {BATCH_ROWS} rows through the gateway")
        results["batch"] = batch(looplab_url, json.dumps({"records": big}).encode(), args.batches)
        say(f"[batch, records] median {results['batch']['median_s'] * 1000:.1f} ms: {results['batch']['rows_per_second']:.0f} rows/s")
        by_column = {"columns": {name: [row[name] for row in big] for name in big[0]}}
        results["batch_columns"] = batch(looplab_url, json.dumps(by_column).encode(), args.batches)
        say(f"[batch, columns] median {results['batch_columns']['median_s'] * 1000:.1f} ms: "
            f"{results['batch_columns']['rows_per_second']:.0f} rows/s")
        # the same gateway over one worker: on two shared cores, one worker's batches are twice as large
        stop(gateway)
        stop(serve)
        (project / "conf" / "local" / "serving.yml").write_text(f"serving:\n  port: {serving_port}\n  workers: 1\n")
        say("[looplab, one worker behind nginx] looplab serve --workers 1 + looplab gateway")
        serve = start([str(BIN / "looplab"), "serve", "--workers", "1"], project, work / "serve-one.log")
        processes.append(serve)
        gateway = start([str(BIN / "looplab"), "gateway"], project, work / "gateway-one.log")
        processes.append(gateway)
        wait_ready(looplab_url, looplab_body, serve, work / "serve-one.log")
        wrk(looplab_url, looplab_body, work, "looplab-one-warmup", 2, args.threads, args.connections)
        results["looplab_one_worker"] = wrk(looplab_url, looplab_body, work, "looplab-one", args.duration, args.threads, args.connections)
        say(f"[looplab, one worker behind nginx] {results['looplab_one_worker']['rps']:.0f} rps, "
            f"p50 {results['looplab_one_worker'].get('p50_ms')} ms, p99 {results['looplab_one_worker'].get('p99_ms')} ms")
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(run_dir, ignore_errors=True)
        if args.keep:
            say(f"kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)

    ratio = results["looplab"]["rps"] / results["mlflow"]["rps"]
    met = {"rps_ratio": ratio >= RPS_RATIO_MIN, "looplab_p99": results["looplab"]["p99_ms"] <= P99_MAX_MS,
           "batch_rows_per_second": {form: results[key]["rows_per_second"] >= BATCH_ROWS_PER_S_MIN[form]
                                     for key, form in (("batch", "records"), ("batch_columns", "columns"))}}
    one = results["looplab_one_worker"]
    ratio_one = one["rps"] / results["mlflow"]["rps"]
    met["one_worker"] = {"rps_ratio": ratio_one >= RPS_RATIO_MIN, "looplab_p99": one["p99_ms"] <= P99_MAX_MS}
    echo_share = results["looplab_worker_direct"]["rps"] / results["echo"]["rps"]
    met["echo_share"] = echo_share >= ECHO_SHARE_MIN
    bento = results["bentoml"]
    ratio_bentoml = results["looplab"]["rps"] / bento["rps"] if "rps" in bento else None
    met["bentoml"] = (ratio_bentoml >= BENTOML_RATIO_MIN and results["looplab"]["p99_ms"] <= BENTOML_P99_MAX_MS) if ratio_bentoml else None
    result = {"benchmark": "serving", "machine": info, **results, "rps_ratio": ratio, "rps_ratio_one_worker": ratio_one,
              "echo_share": echo_share, "rps_ratio_bentoml": ratio_bentoml,
              "targets": {"rps_ratio_min": RPS_RATIO_MIN, "looplab_p99_ms_max": P99_MAX_MS,
                          "batch_rows_per_second_min": BATCH_ROWS_PER_S_MIN, "echo_share_min": ECHO_SHARE_MIN,
                          "bentoml_ratio_min": BENTOML_RATIO_MIN, "bentoml_looplab_p99_ms_max": BENTOML_P99_MAX_MS},
              "met": met,
              "settings": {"duration_s": args.duration, "threads": args.threads, "connections": args.connections,
                           "body": "one row of the evaluation set's features", "model": f"models:/{MODEL}@champion (env test)",
                           "mlflow": "mlflow models serve -w 2 --env-manager local; {\"dataframe_records\": [row]} → /invocations",
                           "looplab": "looplab serve --workers 2 + looplab gateway (nginx); {\"records\": [row]} → /v1/models/bike-demand/predict; "
                                      "rate limit raised, max_body_size and body_buffer_size 16m",
                           "bentoml": "bentoml serve service:BikeDemand (benchmarks/bentoml/service.py, own environment from "
                                      "benchmarks/bentoml/setup.sh): 2 workers, batchable API taking a list of records (adaptive "
                                      "batching, max_batch_size 64, max_latency_ms 1000), OMP_NUM_THREADS=1 and threadpoolctl 1 thread "
                                      "per worker, access log and metrics off, 127.0.0.1; the champion re-written with skops by "
                                      "looplab's environment, loaded with looplab's trusted types; {\"records\": [row]} → /predict",
                           "echo": "benchmarks/serving/echo.py (orjson loads + dumps of the body) on uvicorn, 1 worker, --http httptools "
                                   "--no-access-log; the same body; compared with looplab's first worker without nginx",
                           "setup_s": setup_s},
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    mark = {True: "met", False: "not met"}
    if ratio_bentoml:
        versus_bentoml = (f"BentoML {bento['rps']:.0f} rps (p50 {bento['p50_ms']:.1f} ms, p99 {bento['p99_ms']:.1f} ms): looplab "
                          f"{ratio_bentoml:.1f}× (target ≥ {BENTOML_RATIO_MIN:.0f}× with p99 ≤ {BENTOML_P99_MAX_MS:.0f} ms: "
                          f"{'met' if met['bentoml'] else 'NOT met'})")
    else:
        versus_bentoml = f"BentoML: failed ({bento['failed'].splitlines()[0][:160] if bento['failed'] else 'no reason'})"
    result["summary"] = (
        f"serving ({args.connections} conn, {args.duration} s): mlflow {results['mlflow']['rps']:.0f} rps "
        f"(p50 {results['mlflow']['p50_ms']:.1f} ms, p99 {results['mlflow']['p99_ms']:.1f} ms) · looplab {results['looplab']['rps']:.0f} rps "
        f"(p50 {results['looplab']['p50_ms']:.1f} ms, p99 {results['looplab']['p99_ms']:.1f} ms) · ratio {ratio:.1f}× "
        f"(target ≥ {RPS_RATIO_MIN:.0f}×: {mark[met['rps_ratio']]}; p99 ≤ {P99_MAX_MS:.0f} ms: {mark[met['looplab_p99']]}) · "
        f"{versus_bentoml} · "
        f"one worker behind nginx {one['rps']:.0f} rps (p99 {one['p99_ms']:.1f} ms, {ratio_one:.1f}×) · "
        f"batch of 10,000: records {results['batch']['rows_per_second'] / 1000:.0f}k rows/s "
        f"(target ≥ {BATCH_ROWS_PER_S_MIN['records'] // 1000}k: {mark[met['batch_rows_per_second']['records']]}), "
        f"columns {results['batch_columns']['rows_per_second'] / 1000:.0f}k rows/s "
        f"(target ≥ {BATCH_ROWS_PER_S_MIN['columns'] // 1000}k: {mark[met['batch_rows_per_second']['columns']]}) · one worker without nginx {results['looplab_worker_direct']['rps']:.0f} rps = "
        f"{echo_share:.0%} of a bare ASGI JSON echo's {results['echo']['rps']:.0f} (target ≥ {ECHO_SHARE_MIN:.0%}: {mark[met['echo_share']]})")
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
