"""Model registry (immutable versions, artifacts on files or S3, serving) and the lineage graph
of runs, data windows, model versions and published values."""

from livetwin.registry.artifacts import (
    ArtifactStore,
    FileArtifactStore,
    S3ArtifactStore,
    S3Config,
    artifact_store,
)
from livetwin.registry.lineage import LineageStore, to_graphml
from livetwin.registry.service import Registry
from livetwin.registry.serving import Predictor, fit_linear, register_flavor
from livetwin.registry.store import RegistryStore

__all__ = [
    "ArtifactStore",
    "FileArtifactStore",
    "LineageStore",
    "Predictor",
    "Registry",
    "RegistryStore",
    "S3ArtifactStore",
    "S3Config",
    "artifact_store",
    "fit_linear",
    "register_flavor",
    "to_graphml",
]
