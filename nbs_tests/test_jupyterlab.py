"""JupyterLab on 127.0.0.1 runs a cell through the registered `looplab` kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
import websocket

from conftest import free_port, stop_process

TOKEN = uuid.uuid4().hex


@pytest.fixture(scope="module")
def jupyterlab(tool, quiet_env, root, tmp_path_factory):
    "A JupyterLab server on a free loopback port, stopped after the module."
    port = free_port()
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    log = (runtime / "server.log").open("w")
    server = subprocess.Popen(
        [
            tool("jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env={**quiet_env, "JUPYTER_RUNTIME_DIR": str(runtime)},
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (runtime / "server.log").read_text()
            try:
                if requests.get(f"{base}/api/status", params={"token": TOKEN}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "JupyterLab did not answer within 60 s"
            time.sleep(0.3)
        yield base
    finally:
        stop_process(server, timeout=20)
        log.close()


def execute(base: str, kernel_id: str, code: str, timeout: float = 60) -> dict:
    "Run `code` on a kernel over Jupyter's websocket protocol: its stdout, error and reply status."
    socket = websocket.create_connection(
        f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels?token={TOKEN}", timeout=timeout
    )
    message_id = uuid.uuid4().hex
    socket.send(json.dumps({
        "header": {"msg_id": message_id, "msg_type": "execute_request", "username": "test",
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    result = {"stdout": "", "error": None, "status": None}
    idle = False  # outputs arrive on iopub, the reply on shell: done when both are in
    deadline = time.monotonic() + timeout
    try:
        while result["status"] is None or not idle:
            assert time.monotonic() < deadline, f"no execute_reply within {timeout} s: {result}"
            message = json.loads(socket.recv())
            if message.get("parent_header", {}).get("msg_id") != message_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream" and content["name"] == "stdout":
                result["stdout"] += content["text"]
            elif kind == "error":
                result["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind == "execute_reply":
                result["status"] = content["status"]
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
    finally:
        socket.close()
    return result


def test_looplab_kernel_is_registered(jupyterlab):
    specs = requests.get(f"{jupyterlab}/api/kernelspecs", params={"token": TOKEN}, timeout=10).json()
    assert "looplab" in specs["kernelspecs"], sorted(specs["kernelspecs"])
    assert specs["kernelspecs"]["looplab"]["spec"]["language"] == "python"


def test_a_cell_imports_looplab_through_the_kernel(jupyterlab, root):
    response = requests.post(
        f"{jupyterlab}/api/kernels", params={"token": TOKEN}, json={"name": "looplab"}, timeout=30
    )
    assert response.status_code == 201, response.text
    kernel_id = response.json()["id"]
    try:
        result = execute(
            jupyterlab, kernel_id,
            "import sys, looplab\nfrom looplab.core import find_project_root\n"
            "print(looplab.__version__, sys.prefix, find_project_root(), sep='|')",
        )
        assert result["status"] == "ok" and result["error"] is None, result
        version, prefix, project = result["stdout"].strip().split("|")
        assert version == looplab_version()
        assert prefix == sys.prefix, "the looplab kernel must run the project's environment"
        assert project == str(root)
        failing = execute(jupyterlab, kernel_id, "import looplab.no_such_module")
        assert failing["status"] == "error" and "ModuleNotFoundError" in failing["error"]
    finally:
        requests.delete(f"{jupyterlab}/api/kernels/{kernel_id}", params={"token": TOKEN}, timeout=30)


def looplab_version() -> str:
    import looplab

    return looplab.__version__
