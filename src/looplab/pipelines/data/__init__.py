"""The data layer: sources → ingestion → validation → feature store → data versions.

Ingestion, validation and features run on the engine `data.engine` names (pandas, or Dask on a
cluster): the nodes call looplab.scale's `*_on_engine` steps, which pick the pandas function or its
Dask twin; the pandas modules know nothing of Dask.
"""

from kedro.pipeline import Node, Pipeline

from looplab.features import materialize_features
from looplab.ingestion import append_validated, commit_watermarks
from looplab.pipelines import after_previous, with_settings
from looplab.scale import features_on_engine, ingest_on_engine, validate_on_engine
from looplab.sources import seed_demo_sources
from looplab.validation_report import report_validation
from looplab.versioning import describe_ingested, record_data_versions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(with_settings(seed_demo_sources, "root"), ["params:data", "settings"], "demo_sources", name="seed_demo_sources_node"),
            Node(
                with_settings(ingest_on_engine, "root"),
                ["demo_sources", "params:data", "settings"],
                ["ingested_batch", "pending_watermarks"],
                name="ingest_sources_node",
            ),
            Node(  # what the version record needs of the batch, taken now: the batch goes once it is validated
                with_settings(describe_ingested, "root"),
                ["ingested_batch", "params:data", "settings"],
                "ingested_description",
                name="describe_ingested_node",
            ),
            Node(
                validate_on_engine,
                ["ingested_batch", "params:data", "pending_watermarks"],
                ["validated_batch", "rides_quarantine", "validation_report"],
                name="validate_batch_node",
            ),
            Node(
                with_settings(report_validation, "root", "env"),
                ["validation_report", "params:data", "append_report", "settings"],
                "validation_report_html",
                name="report_validation_node",
            ),
            Node(
                with_settings(append_validated, "root"),
                ["validated_batch", "params:data", "settings"],
                ["validated_rides", "append_report"],
                name="append_validated_node",
            ),
            Node(with_settings(features_on_engine, "root"), ["validated_rides", "params:data", "settings"], "features", name="build_features_node"),
            Node(
                with_settings(materialize_features, "root"),
                ["features", "params:data", "settings"],
                "feature_store_report",
                name="materialize_features_node",
            ),
            Node(
                with_settings(record_data_versions, "root", "env"),
                ["ingested_description", "validated_rides", "features", "params:data", "settings"],
                "data_versions",
                name="record_data_versions_node",
            ),
            Node(  # after the report: a batch whose data does not fit its conf stops the run there, nothing committed
                with_settings(after_previous(commit_watermarks), "root"),
                ["validation_report_html", "pending_watermarks", "validated_rides", "params:data", "settings"],
                "committed_watermarks",
                name="commit_watermarks_node",
            ),
        ],
        tags="data",  # the layer: kedro-viz's tag filter, `kedro run --tags data`; node names stay as they are
    )
