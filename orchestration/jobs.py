"""Jobs: per-city refreshes (sensor, schedule) and the global refit of trained models."""

import dagster as dg

from assets import CITY_ASSET_KEYS, GLOBAL_ASSET_KEYS

city_refresh_job = dg.define_asset_job(
    "city_refresh_job",
    selection=dg.AssetSelection.assets(*CITY_ASSET_KEYS),
    description="Refresh one city: catalog, training signals, embeddings (only new or changed "
                "items are encoded) and SIDs from the frozen codebook. Launched by the new-items "
                "sensor and the weekly schedule.",
    tags={"lgsid/kind": "city"},
)

global_refit_job = dg.define_asset_job(
    "global_refit_job",
    selection=dg.AssetSelection.assets(*GLOBAL_ASSET_KEYS),
    description="Retrain the cross-city models: reward model, G-DPO encoder, SID codebooks "
                "(version bump) and the evaluations. Training runs are limited to one at a time.",
    tags={"lgsid/kind": "training"},
    config={"ops": {"sid_codebook": {"config": {"refit": True}}}},
)
