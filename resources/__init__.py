"""Dagster resources: configuration of storage, data source and encoder."""

from resources.encoder import EncoderResource
from resources.source import DataSource
from resources.storage import LgsidHome, default_home, delta_io_manager

__all__ = ["DataSource", "EncoderResource", "LgsidHome", "default_home", "delta_io_manager"]
