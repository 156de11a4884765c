"""Dagster resources: storage (UPath IO managers), run configuration and compute."""
from .compute import ComputeResource
from .settings import MetaraterConfig, Settings
from .storage import CuratedIOManager, CuratedManifestIOManager, JsonIOManager, ParquetIOManager

__all__ = ["ComputeResource", "MetaraterConfig", "Settings", "ParquetIOManager", "JsonIOManager",
           "CuratedIOManager", "CuratedManifestIOManager"]
