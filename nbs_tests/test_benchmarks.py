"""The data benchmark end to end at a tiny size: it runs, accounts for every row and writes a well-formed result (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

ROWS = 20_000


def test_bench_data_smoke(root, tmp_path, quiet_env):
    out = tmp_path / "data.json"
    completed = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "data" / "run.py"), "--sizes", str(ROWS), "--out", str(out),
         "--workdir", str(tmp_path), "--regions-per-file", "1", "--entities-per-chunk", "2", "--stream-mb", "0"],
        cwd=root, env=quiet_env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data: 20k "), completed.stdout
    assert "chunk 3/3" in completed.stderr, "progress per chunk goes to standard error"

    result = json.loads(out.read_text())
    assert result["benchmark"] == "data" and result["summary"] == lines[0]
    assert {"cores", "python"} <= set(result["machine"])
    assert {"ratio_time_10m_over_1m", "targets", "met", "not_timed"} <= set(result)
    assert result["ratio_time_10m_over_1m"] is None and result["met"]["time_ratio"] is None  # one size: no ratio
    assert "feast_materialisation" in result["not_timed"]
    [size] = result["sizes"]
    assert size["rows"] == ROWS
    assert {"seconds", "rows_per_second", "peak_rss_mb", "steps"} <= set(size)
    assert set(size["steps"]) == {"ingest", "validate", "store", "features"}
    assert all(seconds >= 0 for seconds in size["steps"].values())
    assert size["peak_rss_mb"] > 0 and size["rows_per_second"] > 0
    # nothing is lost: the corrupted rows are quarantined, every valid row gets its feature row
    assert size["rows_quarantined"] > 0 and size["rows_valid"] + size["rows_quarantined"] == ROWS
    assert size["feature_rows"] == size["rows_valid"]
    assert size["chunks"] == {"landing_files": 3, "feature_groups": 2, "entities": 3, "entities_per_feature_group": 2}
    assert not list(tmp_path.glob("looplab-bench-data-*")), "temporary files are removed"


def test_bench_data_stream_smoke(root, tmp_path, quiet_env):
    "The big-file figures on a file of a few hundred kB: pyarrow alone, kedro run -p data taking it, then nothing new (no timing assertions)."
    out = tmp_path / "data.json"
    completed = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "data" / "run.py"), "--sizes", "9000", "--dask-sizes", "--out", str(out),
         "--workdir", str(tmp_path), "--regions-per-file", "1", "--entities-per-chunk", "2", "--stream-mb", "0.2"],
        cwd=root, env=quiet_env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    stream = result["stream"]
    assert stream["file"]["bytes"] >= 200_000 and stream["anchor_pyarrow"]["rows"] == stream["file"]["rows"]
    for figure in (stream["anchor_pyarrow"], stream["data_run"], stream["noop_run"]):
        assert figure["seconds"] > 0 and figure["peak_rss_mb"] > 0
    assert set(stream["met"]) == {"peak_rss", "noop_seconds"} and stream["targets"]["noop_seconds_max"] == 5.0
    split = stream["noop_run"]["in_process"]
    assert split["startup_seconds"] > 0 and split["pipeline_seconds"] > 0
    assert " MB CSV: data run " in result["summary"] and "nothing new" in result["summary"]
    assert not list(tmp_path.glob("looplab-bench-data-*")), "temporary files are removed"


def test_bench_training_smoke(root, tmp_path, quiet_env):
    "The training benchmark once per variant on the test environment's data: a well-formed result (no timing assertions)."
    out = tmp_path / "training.json"
    completed = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "training" / "run.py"), "--env", "test", "--repetitions", "1",
         "--warmup", "0", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=root, env=quiet_env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("training (env test): direct "), completed.stdout
    assert "[1/1] papermill" in completed.stderr, "progress goes to standard error"

    result = json.loads(out.read_text())
    assert result["benchmark"] == "training" and result["summary"] == lines[0]
    assert {"cores", "python", "packages"} <= set(result["machine"])
    assert result["settings"]["env"] == "test" and result["settings"]["repetitions"] == 1
    assert set(result["variants"]) == {"direct", "kedro", "papermill"}
    for variant in result["variants"].values():
        [run] = variant["repetitions"]
        assert run["wall_s"] > 0 and run["cpu_s"] >= 0 and variant["median_wall_s"] == run["wall_s"]
    direct = result["variants"]["direct"]["repetitions"][0]["in_process"]
    assert direct["train_rows"] > 0 and direct["calls_s"] > 0
    breakdown = result["variants"]["papermill"]["repetitions"][0]["breakdown"]
    assert breakdown["code_cells"] > 5 and breakdown["cells_s"]["train_evaluate_register"] > 0
    assert set(result["overheads"]) == {"kedro", "papermill"}
    assert result["target"]["papermill_overhead_s_max"] == 3.0 and isinstance(result["met"]["papermill_overhead"], bool)
    assert result["met"]["papermill_overhead"] == (result["overheads"]["papermill"]["seconds"] <= 3.0)
    assert not list(tmp_path.glob("looplab-bench-training-*")), "temporary files are removed"


def test_bentoml_anchor_has_its_own_pinned_environment(root):
    "BentoML's environment is built by its setup script from pinned requirements; the model's packages match the lock (nothing installed here)."
    folder = root / "benchmarks" / "bentoml"
    assert '"bentoml, sklearn, skops"' in (folder / "setup.sh").read_text(encoding="utf-8")  # built by anchor_env.sh
    pins = dict(line.split("==") for line in (folder / "requirements.txt").read_text(encoding="utf-8").splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["bentoml"].startswith("1.4.")
    lock = dict(line.split("==") for line in (root / "requirements.lock").read_text(encoding="utf-8").splitlines() if "==" in line)
    # the champion is written with skops by looplab's environment: it must load with the same code
    for package in ("scikit-learn", "numpy", "scipy", "skops", "pandas"):
        assert pins[package] == lock[package], package
    service = (folder / "service.py").read_text(encoding="utf-8")
    assert "workers=WORKERS" in service and "WORKERS = 2" in service and "batchable=True" in service
    assert "threadpool_limits(1)" in service and '"access": {"enabled": False}' in service


def test_serving_benchmark_reports_the_bentoml_row(root):
    "The serving benchmark builds BentoML's environment itself and holds looplab to 20× its rps with p99 ≤ 10 ms."
    script = (root / "benchmarks" / "serving" / "run.py").read_text(encoding="utf-8")
    assert 'BENTOML_RATIO_MIN = 20.0' in script and "BENTOML_P99_MAX_MS = 10.0" in script
    assert '"setup.sh"' in script and 'results["bentoml"] = {"failed"' in script and '"rps_ratio_bentoml"' in script


def test_an_anchor_environment_is_built_once_and_checked(root, tmp_path):
    "benchmarks/anchor_env.sh builds FOLDER/.venv from its requirements, leaves a working one alone, and fails when its modules do not import."
    import subprocess

    script = root / "benchmarks" / "anchor_env.sh"
    (tmp_path / "requirements.txt").write_text("")  # nothing to install: no registry needed

    def build(modules: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(script), str(tmp_path), modules], capture_output=True, text=True, timeout=300)

    first = build("json")
    assert first.returncode == 0 and f"built {tmp_path}/.venv" in first.stdout, first.stdout + first.stderr
    assert (tmp_path / ".venv" / "bin" / "python").is_file()
    again = build("json")
    assert again.returncode == 0 and again.stdout == "", again.stdout  # working already: left alone
    missing = build("no_such_module_for_the_test")
    assert missing.returncode != 0 and "No module named 'no_such_module_for_the_test'" in missing.stderr
    usage = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage: anchor_env.sh" in usage.stderr
