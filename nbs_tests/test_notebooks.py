"""Notebook hygiene: nbdev-clean keeps what papermill and Voila need, and the committed notebooks are clean."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def notebook(cells: list[dict], metadata: dict) -> dict:
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def code_cell(source: str, **metadata) -> dict:
    return {"cell_type": "code", "execution_count": 3, "id": "x1", "metadata": metadata,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}], "source": [source]}


def nbdev_clean(tool, folder: Path, path: Path) -> None:
    subprocess.run([tool("nbdev-clean"), "--fname", str(path)], cwd=folder, check=True, capture_output=True, timeout=60)


def test_nbdev_clean_keeps_papermill_tags_and_voila_metadata(tool, root, tmp_path):
    shutil.copy(root / "pyproject.toml", tmp_path)
    path = tmp_path / "app.ipynb"
    path.write_text(json.dumps(notebook(
        [code_cell("window_days = 7", tags=["parameters"], collapsed=True)],
        {"voila": {"template": "lab", "theme": "light"}, "kernelspec": {"name": "looplab", "display_name": "looplab", "language": "python"},
         "widgets": {"state": {}}, "language_info": {"name": "python", "version": "3.11.7"}},
    )))
    nbdev_clean(tool, tmp_path, path)
    cleaned = json.loads(path.read_text())
    assert cleaned["cells"][0]["metadata"] == {"tags": ["parameters"]}, "papermill's parameters tag must survive"
    assert cleaned["metadata"]["voila"] == {"template": "lab", "theme": "light"}, "Voila metadata must survive"
    assert "language_info" not in cleaned["metadata"], "other metadata is still cleaned"
    assert cleaned["cells"][0]["execution_count"] is None


@pytest.mark.parametrize("folder", ["notebooks", "nbs_tests"])
def test_committed_notebooks_are_clean(tool, root, tmp_path, folder):
    "Notebooks are committed as nbdev-clean leaves them: no outputs, counts or stray metadata in the diffs."
    shutil.copy(root / "pyproject.toml", tmp_path)
    dirty = []
    for source in sorted((root / folder).rglob("*.ipynb")):
        if ".ipynb_checkpoints" in source.parts:
            continue
        copy = tmp_path / source.name
        shutil.copy(source, copy)
        nbdev_clean(tool, tmp_path, copy)
        if json.loads(copy.read_text()) != json.loads(source.read_text()):
            dirty.append(str(source.relative_to(root)))
    assert not dirty, f"run .venv/bin/nbdev-clean and commit: {dirty}"


def test_every_library_notebook_is_literate(root):
    "Each library notebook opens with a title, exports one module, and tests what it exports."
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# "), path.name
        sources = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
        assert sum(s.startswith("#| default_exp ") for s in sources) == 1, path.name
        unexported = [s for s in sources if not s.startswith(("#| export", "#| default_exp"))]
        assert any(("test_" in s or "assert " in s) for s in unexported), f"{path.name} has no examples that test"
