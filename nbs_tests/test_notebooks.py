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


def test_library_figures_render_as_images_in_an_executed_notebook(tool, quiet_env, tmp_path):
    "A looplab figure left as a cell's value is drawn (image/png) in the looplab kernel, not printed as `<Figure size …>`."
    frame_code = ("import pandas as pd\n"
                  "frame = pd.DataFrame({'event_timestamp': pd.date_range('2011-03-01', periods=72, freq='h'), 'bikers': range(72)})\n"
                  "drift = pd.DataFrame({'window_start': ['2011-03-01'] * 2 + ['2011-03-08'] * 2, 'feature': ['hr', 'temp'] * 2,\n"
                  "                      'p_value': [0.5, 1e-4, 0.2, 1e-9]})")
    figures = {
        "predicted vs actual": "from looplab.evaluation import plot_predicted_vs_actual\n"
                               "plot_predicted_vs_actual(frame, frame['bikers'] * 1.1, {'target': 'bikers'})",
        "residuals": "from looplab.evaluation import plot_residuals_over_time\n"
                     "plot_residuals_over_time(frame, frame['bikers'] * 0.9, {'target': 'bikers'})",
        "drift heat map": "from looplab.dashboard import plot_p_value_heatmap\nplot_p_value_heatmap(drift)",
    }
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{index}", "metadata": {}, "outputs": [], "source": [source]}
             for index, source in enumerate([frame_code, *figures.values()])]
    source, executed = tmp_path / "figures.ipynb", tmp_path / "figures-executed.ipynb"
    source.write_text(json.dumps(notebook(cells, {"kernelspec": {"name": "looplab", "display_name": "looplab", "language": "python"}})))
    result = subprocess.run([tool("papermill"), str(source), str(executed), "-k", "looplab", "--cwd", str(tmp_path)],
                            env=quiet_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, cell in zip(figures, json.loads(executed.read_text())["cells"][1:], strict=True):
        shown = [output.get("data", {}) for output in cell["outputs"] if output["output_type"] in ("execute_result", "display_data")]
        assert any(data.get("image/png") for data in shown), f"{name}: shown as {shown}"
