"""The monitoring layer: performance monitoring → data drift detection → retraining trigger."""

import functools

from kedro.pipeline import Node, Pipeline

from looplab.monitoring import monitor_windows
from looplab.retraining import retraining_trigger


def _after_previous(function):
    "`function` with one more first input that it ignores: it only orders the node after that dataset."

    @functools.wraps(function)
    def run(_previous, *args):
        return function(*args)

    return run


def create_pipeline(after: str | None = None, **kwargs) -> Pipeline:
    """One monitoring run; with `after` (a dataset name) it starts only once that dataset exists.

    In the whole loop (`__default__`) monitoring runs `after="deployment"`, so it sees the model the
    same run deployed; `kedro run -p monitoring` runs it on its own.
    """
    monitor = _after_previous(monitor_windows) if after else monitor_windows
    return Pipeline(
        [
            Node(
                monitor,
                ([after] if after else [])
                + ["validated_rides", "params:monitoring", "params:data", "params:training", "params:evaluation"],
                "monitoring_report",
                name="monitor_windows_node",
            ),
            Node(
                retraining_trigger,
                [
                    "monitoring_report", "validated_rides", "params:monitoring", "params:retraining",
                    "params:data", "params:training",
                ],
                "retraining_decision",
                name="retraining_trigger_node",
            ),
        ]
    )
