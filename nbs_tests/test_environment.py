"""The one exact environment: pyproject.toml, requirements.lock and environment.yml agree."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;]+)")


def read_lock(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements.lock line {number} is not an exact pin: {line!r}"
        pins[canonicalize_name(match["name"])] = Version(match["version"])
    return pins


@pytest.fixture(scope="module")
def pyproject(root):
    return tomllib.loads((root / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def lock(root):
    return read_lock((root / "requirements.lock").read_text())


def declared_requirements(pyproject) -> list[Requirement]:
    project = pyproject["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_lock_is_produced_from_pyproject(root):
    header = (root / "requirements.lock").read_text().splitlines()[:3]
    assert any("pyproject.toml" in line for line in header), header


def test_every_declared_requirement_is_pinned_within_its_range(pyproject, lock):
    for requirement in declared_requirements(pyproject):
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is declared in pyproject.toml but missing from requirements.lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"requirements.lock pins {name}=={lock[name]}, outside pyproject.toml's {requirement}"
        )


def test_alibi_detect_pins_hold(lock):
    assert lock["numpy"] < Version("2"), lock["numpy"]
    assert lock["pandas"] < Version("3"), lock["pandas"]
    assert "alibi-detect" in lock


def test_lock_is_closed_under_dependencies(pyproject, lock):
    "Every requirement of every locked package (for this platform) is itself locked: no loose transitive."
    environment = default_environment()
    missing = []
    for name in lock:
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # checked by the next test
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            if canonicalize_name(requirement.name) not in lock:
                missing.append(f"{name} needs {requirement}")
    assert not missing, "requirements.lock is not closed:\n" + "\n".join(missing)


def test_installed_environment_is_the_lock(lock):
    wrong = []
    for name, pinned in lock.items():
        try:
            installed = Version(distribution(name).version)
        except PackageNotFoundError:
            wrong.append(f"{name} is locked at {pinned} but not installed")
            continue
        if installed != pinned:
            wrong.append(f"{name}: installed {installed}, locked {pinned}")
    assert not wrong, "the environment differs from requirements.lock (run make setup):\n" + "\n".join(wrong)


def test_environment_yml_installs_the_same_lock(root, pyproject):
    conda = yaml.safe_load((root / "environment.yml").read_text())
    dependencies = conda["dependencies"]
    pythons = [d for d in dependencies if isinstance(d, str) and d.startswith("python")]
    assert pythons == ["python=3.11"], pythons
    assert Requirement("python" + pyproject["project"]["requires-python"]).specifier.contains("3.11")
    pip_sections = [d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    # Only the lock and the project itself: any other package would make conda users' environment differ.
    assert sorted(pip_sections[0]) == sorted(["-r requirements.lock", "-e ."]), pip_sections[0]
    conda_packages = [d for d in dependencies if isinstance(d, str) and not d.startswith(("python", "pip"))]
    assert not conda_packages, f"environment.yml installs packages outside the lock: {conda_packages}"


def test_read_lock_refuses_loose_pins():
    with pytest.raises(AssertionError, match="not an exact pin"):
        read_lock("numpy>=1.26\n")
    assert read_lock("# header\nuvicorn[standard]==0.30.0\n    # via looplab\n") == {"uvicorn": Version("0.30.0")}


PROBE = 'from mlflow.telemetry.utils import is_telemetry_disabled; print("telemetry disabled:", is_telemetry_disabled())'


def test_make_turns_mlflow_telemetry_off(root):
    "Every target runs with MLflow's telemetry off: MLflow honours only the words, not DO_NOT_TRACK=1."
    # MLflow also stays quiet under pytest and on CI services; the probes run as a user's shell would
    ci_markers = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "CIRCLECI", "TRAVIS", "TF_BUILD")
    environment = {key: value for key, value in os.environ.items() if key not in ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", *ci_markers)}
    probe = f"telemetry-probe: ; @$(BIN)/python -c '{PROBE}'"
    result = subprocess.run(["make", "-s", "--no-print-directory", "--eval", probe, "telemetry-probe", f"VENV={sys.prefix}"],
                            cwd=root, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "telemetry disabled: True", result.stdout
    shipped = subprocess.run([sys.executable, "-c", PROBE], env={**environment, "DO_NOT_TRACK": "1"}, capture_output=True, text=True, timeout=120)
    assert shipped.stdout.strip() == "telemetry disabled: False", "the probe tells the settings apart"


def test_ctrl_c_stops_make_serve_cleanly(root, tmp_path):
    "Ctrl-C on `make serve`: both servers stop, nothing is left behind, and the shell does not crash (its trap re-entered itself)."
    import signal
    import time

    fake = tmp_path / "bin"  # stand-ins for `looplab serve` and `looplab gateway`: the recipe's process handling is the subject
    fake.mkdir()
    (fake / "looplab").write_text("#!/bin/sh\nexec sleep 300\n")
    (fake / "looplab").chmod(0o755)
    recipe = subprocess.run(["make", "-s", "-n", "-o", "setup", "-o", "system-packages", "serve", f"BIN={fake}"],
                            cwd=root, capture_output=True, text=True, timeout=120)
    assert recipe.returncode == 0 and f"{fake}/looplab gateway" in recipe.stdout, recipe.stdout + recipe.stderr
    # as from a terminal: SIGINT at its default (a test runner's worker may ignore it, and a shell that starts with a
    # signal ignored cannot trap it)
    shell = subprocess.Popen(["bash", "-c", recipe.stdout], start_new_session=True, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def group() -> list[str]:
        listed = subprocess.run(["pgrep", "-g", str(shell.pid)], capture_output=True, text=True, timeout=30).stdout.split()
        return [pid for pid in listed if pid != str(shell.pid)]

    deadline = time.monotonic() + 60
    while len(group()) < 2:
        assert time.monotonic() < deadline and shell.poll() is None, "the two servers did not start"
        time.sleep(0.2)
    os.killpg(shell.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    try:
        code = shell.wait(timeout=180)  # generous: a busy machine
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
    assert code != -signal.SIGSEGV and "Segmentation" not in shell.stderr.read(), code
    deadline = time.monotonic() + 30
    while group():
        assert time.monotonic() < deadline, f"left running after Ctrl-C: {group()}"
        time.sleep(0.2)


def test_make_mlflow_ui_serves_the_projects_store_with_one_worker(root, tmp_path, quiet_env):
    "`make mlflow-ui` starts the MLflow UI on the project's own store, with one worker and no job runner."
    import signal
    import time

    import requests

    from conftest import copy_project, free_port

    project = copy_project(root, tmp_path / "project")
    port = free_port()
    recipe = subprocess.run(["make", "-s", "-n", "-o", "setup", "mlflow-ui", f"BIN={sys.prefix}/bin", f"MLFLOW_PORT={port}"],
                            cwd=root, capture_output=True, text=True, timeout=120)
    assert recipe.returncode == 0, recipe.stderr
    server = subprocess.Popen(["bash", "-c", recipe.stdout], cwd=project, env=quiet_env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            with contextlib.suppress(requests.ConnectionError):
                answer = requests.get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                                      params={"max_results": 10}, timeout=5)
                if answer.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the MLflow UI did not answer within 180 s"
            time.sleep(0.5)
        assert (project / "mlflow.db").is_file(), "the UI opened the project's own store"
        processes = subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True, text=True, timeout=30).stdout.split()
        assert len(processes) <= 4, f"{len(processes)} processes: one worker and no job runner expected"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.parametrize("target, variable, flag", [
    ("lab", "LAB_PORT", "--port={}"), ("viz", "VIZ_PORT", "--port={}"), ("apps", "APPS_PORT", "--port {}"),
    ("mlflow-ui", "MLFLOW_PORT", "--port {}"),
])
def test_every_server_target_takes_its_port(root, target, variable, flag):
    "Two of them on one machine, or a port already taken: each server target listens where its variable says."
    recipe = subprocess.run(["make", "-s", "-n", "-o", "setup", target, f"{variable}=18123", "BIN=/bin"], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert recipe.returncode == 0, recipe.stderr
    assert flag.format(18123) in recipe.stdout, recipe.stdout
