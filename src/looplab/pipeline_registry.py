"""looplab's pipelines: one per layer of the loop, found by `find_pipelines`."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The order in which the layers run when the whole loop runs; layers not written yet are skipped.
LOOP_ORDER = ("data", "training", "deployment", "monitoring")


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under `looplab.pipelines`, plus `__default__`: the whole loop."""
    pipelines = find_pipelines(raise_errors=True)
    loop = [pipelines[name] for name in LOOP_ORDER if name in pipelines and name != "monitoring"]
    if "monitoring" in pipelines:  # in the whole loop, monitoring watches the model this run deployed
        from looplab.pipelines.monitoring import create_pipeline as monitoring_pipeline

        loop.append(monitoring_pipeline(after="deployment" if "deployment" in pipelines else None))
    pipelines["__default__"] = sum(loop, Pipeline([]))
    return pipelines
