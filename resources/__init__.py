"""Dagster resources: configuration of storage, data source and encoder."""

from resources.delta_io import delta_io_manager
from resources.encoder import EncoderResource
from resources.home import LgsidHome, default_home
from resources.source import DataSource

__all__ = ["DataSource", "EncoderResource", "LgsidHome", "default_home", "delta_io_manager"]
