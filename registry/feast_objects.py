"""MLFS definitions as stock Feast objects (entities, sources, feature views).

Each view becomes a plain Feast ``FeatureView`` whose batch source is the view's offline output
(Parquet written by MLFS) and whose tags carry the MLFS definition as JSON: no code is stored.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from featurestore.definitions import Entity, StreamSource
from featurestore.feast_types import feast_dtype, value_type
from featurestore.view import StreamFeatureView
from transforms.dtypes import DType
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, spec_hash

TAG_MANAGED = "mlfs.managed"
TAG_SPEC = "mlfs.spec"
TAG_SPEC_HASH = "mlfs.spec_hash"
TAG_KIND = "mlfs.kind"
TAG_REPO = "mlfs.repo"  # the repository that registered the object
TAG_HISTORY = "mlfs.history"  # the view's definition versions, newest last
HISTORY_KEPT = 50
OUTPUT_KIND = "offline_output"


def offline_dir(offline_root: Path, view: str) -> Path:
    return offline_root / view


def output_source_name(view: str) -> str:
    """The Feast data source that reads a view's offline output."""
    return f"{view}__mlfs_offline"


def feast_entity(entity: Entity, key_dtype: DType) -> Any:
    from feast import Entity as FeastEntity

    return FeastEntity(
        name=entity.name,
        join_keys=list(entity.join_keys),
        value_type=value_type(key_dtype),
        description=entity.description,
        tags={**entity.tags, TAG_MANAGED: "true"},
        owner=entity.owner,
    )


def feast_history_source(source: StreamSource, repo_path: Path) -> Any:
    """The stream source's history twin as a Feast ``FileSource`` (for lookup and lineage)."""
    from feast import FileSource

    history = Path(source.history)
    path = history if history.is_absolute() else repo_path / history
    return FileSource(
        name=source.name,
        path=str(path),
        timestamp_field=source.timestamp_field,
        description=source.description,
        tags={
            **source.tags,
            TAG_MANAGED: "true",
            TAG_KIND: f"{source.kind}_stream_source",
            TAG_SPEC: json.dumps(source.spec(), sort_keys=True),
        },
        owner=source.owner,
    )


def feast_feature_view(view: StreamFeatureView, entities: list[Any], offline_root: Path) -> Any:
    """The view as a Feast ``FeatureView`` reading MLFS's offline output."""
    from feast import FeatureView, FileSource
    from feast import Field as FeastField
    from feast.data_format import ParquetFormat

    spec = view.spec()
    output = FileSource(
        name=output_source_name(view.name),
        path=str(offline_dir(offline_root, view.name)),
        file_format=ParquetFormat(),
        timestamp_field=EVENT_TIMESTAMP,
        created_timestamp_column=CREATED_TIMESTAMP,
        tags={TAG_MANAGED: "true", TAG_KIND: OUTPUT_KIND},
    )
    schema = [FeastField(name=f.name, dtype=feast_dtype(f.dtype)) for f in view.key_fields]
    schema += [FeastField(name=f.name, dtype=feast_dtype(f.dtype)) for f in view.feature_fields]
    return FeatureView(
        name=view.name,
        entities=entities,
        ttl=view.ttl if view.ttl > timedelta(0) else timedelta(0),
        schema=schema,
        source=output,
        online=view.online,
        offline=view.offline,
        description=view.description,
        tags={
            **view.tags,
            TAG_MANAGED: "true",
            TAG_KIND: "stream_feature_view",
            TAG_SPEC: json.dumps(spec, sort_keys=True),
            TAG_SPEC_HASH: spec_hash(spec),
        },
        owner=view.owner,
    )
