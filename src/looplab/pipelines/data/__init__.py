"""The data layer: sources → ingestion → validation → feature store → data versions.

Ingestion, validation and features run on the engine `data.engine` names (pandas, or Dask on a
cluster): the nodes call looplab.scale's `*_on_engine` steps, which pick the pandas function or its
Dask twin; the pandas modules know nothing of Dask.
"""

from kedro.pipeline import Node, Pipeline

from looplab.features import materialize_features
from looplab.ingestion import append_validated, commit_watermarks
from looplab.scale import features_on_engine, ingest_on_engine, validate_on_engine
from looplab.sources import seed_demo_sources
from looplab.validation import report_validation
from looplab.versioning import record_data_versions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(seed_demo_sources, "params:data", "demo_sources", name="seed_demo_sources_node"),
            Node(
                ingest_on_engine,
                ["demo_sources", "params:data"],
                ["ingested_batch", "pending_watermarks"],
                name="ingest_sources_node",
            ),
            Node(
                validate_on_engine,
                ["ingested_batch", "params:data"],
                ["validated_batch", "rides_quarantine", "validation_report"],
                name="validate_batch_node",
            ),
            Node(
                report_validation,
                ["validation_report", "params:data"],
                "validation_report_html",
                name="report_validation_node",
            ),
            Node(
                append_validated,
                ["validated_batch", "params:data"],
                ["validated_rides", "append_report"],
                name="append_validated_node",
            ),
            Node(features_on_engine, ["validated_rides", "params:data"], "features", name="build_features_node"),
            Node(
                materialize_features,
                ["features", "params:data"],
                "feature_store_report",
                name="materialize_features_node",
            ),
            Node(
                record_data_versions,
                ["ingested_batch", "validated_rides", "features", "params:data"],
                "data_versions",
                name="record_data_versions_node",
            ),
            Node(
                commit_watermarks,
                ["pending_watermarks", "validated_rides", "params:data"],
                "committed_watermarks",
                name="commit_watermarks_node",
            ),
        ]
    )
