"""Container images (deploy/docker): each Dockerfile parsed and checked — multi-stage, base pinned by
version, non-root user, the exact lock installed with --no-deps, a health check on a real route, no
secrets — and the build context (.dockerignore) keeps out what must never reach an image.
Docker cannot build here; these checks are what can be proven without it."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from conftest import ROOT

DOCKER = ROOT / "deploy" / "docker"
IMAGES = {"serving": 8000, "jobs": None, "apps": 8866}  # image → the port it serves (None: a job)
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL|AWS_|PRIVATE", re.IGNORECASE)
NEVER_IN_CONTEXT = [".git", ".venv", "conf/local", "data", "mlruns", "mlartifacts", "mlflow.db", ".env"]


def instructions(path: Path) -> list[dict]:
    parser = DockerfileParser(path=str(path))
    return [item for item in parser.structure if item["instruction"] != "COMMENT"]


def problems(path: Path, port: int | None) -> list[str]:
    "What is wrong with one Dockerfile; empty when it follows the house rules."
    found = []
    items = instructions(path)
    stages = [item for item in items if item["instruction"] == "FROM"]
    if len(stages) < 2:
        found.append("not multi-stage (one FROM)")
    for stage in stages:
        image = stage["value"].split()[0]
        if not PINNED_BASE.match(image):
            found.append(f"base {image!r} is not pinned by version (python:3.11.N-slim-bookworm)")
    last_stage = max((index for index, item in enumerate(items) if item["instruction"] == "FROM"), default=0)
    final = items[last_stage:]
    users = [item["value"].split(":")[0] for item in final if item["instruction"] == "USER"]
    if not users or users[-1] in ("root", "0"):
        found.append("the final stage does not switch to a non-root USER")
    runs = " ".join(item["value"] for item in items if item["instruction"] == "RUN")
    if not re.search(r"pip install --no-deps\b[^&|;]*-r requirements\.lock", runs):
        found.append("the lock is not installed with pip install --no-deps -r requirements.lock")
    if not any(item["instruction"] == "COPY" and "requirements.lock" in item["value"] for item in items):
        found.append("requirements.lock is not copied into the build")
    checks = [item for item in final if item["instruction"] == "HEALTHCHECK"]
    if not checks or checks[-1]["value"].strip().upper() == "NONE":
        found.append("no HEALTHCHECK in the final stage")
    for item in items:
        if item["instruction"] in ("ENV", "ARG") and SECRET_NAME.search(item["value"].split("=")[0].split()[0]):
            found.append(f"{item['instruction']} {item['value']!r} looks like a secret baked into the image")
        if item["instruction"] in ("COPY", "ADD"):
            sources = [part for part in shlex.split(item["value"]) if not part.startswith("--")][:-1]
            if any(source in (".", "./") for source in sources):
                found.append(f"{item['instruction']} {item['value']!r} copies the whole build context")
            if any(source.startswith(("conf/local", ".env")) for source in sources):
                found.append(f"{item['instruction']} {item['value']!r} copies local configuration or credentials")
    exposed = [item["value"] for item in final if item["instruction"] == "EXPOSE"]
    if port is not None and str(port) not in " ".join(exposed):
        found.append(f"EXPOSE {exposed} does not include port {port}")
    if not any(item["instruction"] == "CMD" for item in final):
        found.append("no CMD")
    return found


def _matches(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        parts = path.split("/")
        return any(fnmatch.fnmatch("/".join(parts[index:]), pattern[3:]) for index in range(len(parts)))
    return fnmatch.fnmatch(path, pattern)


def ignored(path: str, patterns: list[str]) -> bool:
    "Docker's rule in short: the last matching pattern wins; a pattern matches the path or a folder above it."
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(_matches(prefix, pattern.lstrip("!")) for prefix in prefixes):
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_follows_the_rules(image):
    path = DOCKER / f"{image}.Dockerfile"
    assert path.is_file(), f"{path} is missing"
    assert problems(path, IMAGES[image]) == []


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_copied_file_exists_and_reaches_the_build(image):
    patterns = dockerignore()
    for item in instructions(DOCKER / f"{image}.Dockerfile"):
        if item["instruction"] != "COPY" or "--from=" in item["value"]:
            continue
        for source in [part for part in shlex.split(item["value"]) if not part.startswith("--")][:-1]:
            assert (ROOT / source).exists(), f"{image}: COPY {source}: no such file in the repository"
            assert not ignored(source.rstrip("/"), patterns), f"{image}: COPY {source}: excluded by .dockerignore"


def test_the_checks_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nENV MLFLOW_TRACKING_PASSWORD=hunter2\nCOPY . /app\n"
                   "RUN pip install -r requirements.lock\nCMD [\"looplab\", \"serve\"]\n")
    found = " | ".join(problems(bad, 8000))
    for expected in ("not multi-stage", "not pinned", "non-root USER", "--no-deps", "HEALTHCHECK", "secret",
                     "whole build context", "EXPOSE"):
        assert expected in found, f"{expected!r} not reported: {found}"


def test_dockerignore_keeps_local_state_and_credentials_out():
    patterns = dockerignore()
    for path in NEVER_IN_CONTEXT + ["conf/local/credentials.yml", "data/01_raw/Bikeshare.csv", "src/looplab/__pycache__/x.pyc"]:
        assert ignored(path, patterns), f"{path} would be sent to the Docker build"
    for path in ("requirements.lock", "pyproject.toml", "src/looplab/serving.py", "conf/base/serving.yml", "notebooks/runs/train.ipynb"):
        assert not ignored(path, patterns), f"{path} is needed by the images but excluded"


def test_images_run_what_the_project_serves():
    "The serving image's health check and port are those of looplab.serving; its command is `looplab serve`."
    from looplab.core import load_config
    from looplab.serving import create_app, serving_settings

    routes = {getattr(route, "path", None) for route in create_app(serving_settings(None, ROOT)).routes}
    final = instructions(DOCKER / "serving.Dockerfile")
    check = next(item["value"] for item in final if item["instruction"] == "HEALTHCHECK")
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[a-z/]*)", check)
    assert url, f"the serving HEALTHCHECK calls no local URL: {check}"
    assert url.group(2) in routes, f"HEALTHCHECK path {url.group(2)} is not a route of the serving app ({sorted(routes)})"
    command = next(item["value"] for item in reversed(final) if item["instruction"] == "CMD")
    assert '"serve"' in command and f'"--port", "{url.group(1)}"' in command
    assert int(url.group(1)) == int(load_config("serving", root=ROOT)["serving"]["port"])
    for image, port in IMAGES.items():
        text = (DOCKER / f"{image}.Dockerfile").read_text()
        assert "LOOPLAB_PROJECT_ROOT=/app" in text, f"{image}: the project root is not set"
        assert "USER 10001:10001" in text, f"{image}: the user is not the uid the Kubernetes manifests run as"
        if port is not None:
            assert f"EXPOSE {port}" in text
