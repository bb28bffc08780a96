"""The monitoring layer: performance monitoring → data drift detection → retraining trigger."""

from kedro.pipeline import Node, Pipeline

from looplab.monitoring import monitor_windows
from looplab.pipelines import after_previous, with_settings
from looplab.retraining import retraining_trigger


def create_pipeline(after: str | None = None, **kwargs) -> Pipeline:
    """One monitoring run; with `after` (a dataset name) it starts only once that dataset exists.

    In the whole loop (`__default__`) monitoring runs `after="deployment"`, so it sees the model the
    same run deployed; `kedro run -p monitoring` runs it on its own.
    """
    monitor = with_settings(monitor_windows, "root", "env")
    return Pipeline(
        [
            Node(
                after_previous(monitor) if after else monitor,
                ([after] if after else [])
                + ["validated_rides", "params:monitoring", "params:data", "params:training", "params:evaluation", "settings"],
                "monitoring_report",
                name="monitor_windows_node",
            ),
            Node(
                with_settings(retraining_trigger, "root", "env"),
                [
                    "monitoring_report", "validated_rides", "params:monitoring", "params:retraining",
                    "params:data", "params:training", "settings",
                ],
                "retraining_decision",
                name="retraining_trigger_node",
            ),
        ],
        tags="monitoring",  # the layer: kedro-viz's tag filter, `kedro run --tags monitoring`
    )
