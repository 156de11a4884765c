"""Dagster resources: storage (files per shard, a JSON IO manager), run configuration and compute."""
from .compute import ComputeResource
from .settings import MetaraterConfig, Settings
from .storage import JsonIOManager, ShardFiles, safe_name

__all__ = ["ComputeResource", "MetaraterConfig", "Settings", "JsonIOManager", "ShardFiles", "safe_name"]
