"""The storage names under their historical import path, ``resources.storage``.

The code lives in three modules: :mod:`resources.uris` (checks of table names, tables URIs and
paths, and storage options), :mod:`resources.home` (the ``LgsidHome`` resource and its
``$LGSID_HOME`` / ``$LGSID_TABLES_URI`` defaults) and :mod:`resources.delta_io` (the retrying
Delta IO manager, its type handler and the empty-commit check).
"""

from resources.delta_io import (
    DeltaLogError,
    LgsidDeltaIOManager,
    RetryingDeltaLakePolarsTypeHandler,
    _is_commit_conflict,
    check_delta_log,
    delta_io_manager,
    s3_io_manager_options,
)
from resources.home import LgsidHome, default_home, default_tables_uri
from resources.uris import (
    DELTA_SCHEMA,
    REMOTE_SCHEMES,
    default_storage_options,
    is_remote_uri,
    local_tables_root,
    normalize_storage_options,
    normalize_tables_uri,
    parse_storage_options,
    validate_table_name,
)

__all__ = [
    "DELTA_SCHEMA", "REMOTE_SCHEMES", "DeltaLogError", "LgsidDeltaIOManager", "LgsidHome",
    "RetryingDeltaLakePolarsTypeHandler", "_is_commit_conflict", "check_delta_log", "default_home",
    "default_storage_options", "default_tables_uri", "delta_io_manager", "is_remote_uri",
    "local_tables_root", "normalize_storage_options", "normalize_tables_uri", "parse_storage_options",
    "s3_io_manager_options", "validate_table_name",
]
