"""Feast definitions of looplab's feature repository: the entity, the source, the feature views, the services.

`looplab.features.materialize_features` loads this file and applies what `feature_definitions`
returns (`FeatureStore.apply` from Python). Names, feature lists, types and time-to-live come from
conf/base/parameters_data.yml `data.features` through looplab, so nothing here repeats the
dataset: another dataset gets its views by changing parameters only. Run nothing here by hand —
`feast apply` on this folder finds no module-level objects and would remove the registered ones.

The label (the target) sits in its own view, which is offline only and outside the `serving`
service: training sets join it point-in-time; the online store never holds it.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Float64, Int64, String

# pandas dtype kind -> Feast type of a feature, and value type of the entity's join key
FEAST_TYPES = {"i": Int64, "u": Int64, "f": Float64, "b": Bool, "O": String, "U": String}
ENTITY_VALUE_TYPES = {"i": ValueType.INT64, "u": ValueType.INT64, "O": ValueType.STRING, "U": ValueType.STRING}


def feature_definitions(
    entity_name: str,                        # Feast entity name
    join_key: str,                           # entity column of the feature table
    entity_kind: str,                        # numpy dtype kind of the entity column ("O" for strings)
    source_path: str,                        # the feature parquet, relative to the store folder
    timestamp_field: str,                    # event time column of the parquet
    views: dict[str, dict[str, str]],        # view name -> {feature: numpy dtype kind}
    label_view: str,                         # the view holding the label: offline only
    ttl: timedelta,                          # how far back a serving feature row may be joined
    label_ttl: timedelta,                    # how far back a label may be joined (less than one time step)
) -> list:                                   # Feast objects, ready for `FeatureStore.apply`
    "The entity, the file source, one feature view per group, and the `serving` and `training` services."
    if entity_kind not in ENTITY_VALUE_TYPES:
        raise ValueError(f"feature store: entity column {join_key!r} has dtype kind {entity_kind!r}; use strings or integers")
    entity = Entity(name=entity_name, join_keys=[join_key], value_type=ENTITY_VALUE_TYPES[entity_kind])
    source = FileSource(name=f"{entity_name}_features_source", path=source_path, timestamp_field=timestamp_field)
    feature_views = []
    for name, features in views.items():
        unknown = {feature: kind for feature, kind in features.items() if kind not in FEAST_TYPES}
        if unknown:
            raise ValueError(f"feature store: view {name!r} has columns of unsupported dtype kinds {unknown}")
        is_label = name == label_view
        feature_views.append(FeatureView(
            name=name,
            entities=[entity],
            ttl=label_ttl if is_label else ttl,
            schema=[Field(name=feature, dtype=FEAST_TYPES[kind]) for feature, kind in features.items()],
            source=source,
            online=not is_label,
            tags={"role": "label" if is_label else "feature"},
        ))
    serving = FeatureService(name="serving", features=[view for view in feature_views if view.name != label_view])
    training = FeatureService(name="training", features=feature_views)
    return [entity, source, *feature_views, serving, training]
