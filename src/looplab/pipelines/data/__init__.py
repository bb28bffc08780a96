"""The data layer pipeline: raw sources to timestamped rides."""

from kedro.pipeline import Node, Pipeline

from looplab.sources import bikeshare_to_rides


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                bikeshare_to_rides,
                ["bikeshare_raw", "params:data.bikeshare"],
                "rides",
                name="prepare_rides_node",
            ),
        ]
    )
