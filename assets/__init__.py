"""Dagster asset definitions, grouped by stage: data, alignment, tokenization, evaluation.

Each asset is thin: it reads its inputs, calls one function of the domain core in
``lgsid_pipeline/`` and returns its result with metadata.
"""

import dagster as dg

from assets import alignment, data, evaluation, signals, tokenization
from assets.versions import with_code_versions

_MODULES = [data, signals, alignment, tokenization, evaluation]

ALL_ASSETS = [obj for m in _MODULES for obj in vars(m).values() if isinstance(obj, dg.AssetsDefinition)]
ALL_CHECKS = [obj for m in _MODULES for obj in vars(m).values() if isinstance(obj, dg.AssetChecksDefinition)]
ALL_ASSETS = with_code_versions([a for a in ALL_ASSETS if a not in ALL_CHECKS])

CITY_ASSET_KEYS = [k for a in ALL_ASSETS if a.partitions_def is not None for k in a.keys]
GLOBAL_ASSET_KEYS = [k for a in ALL_ASSETS if a.partitions_def is None for k in a.keys]
