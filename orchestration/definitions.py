"""The code location: one ``Definitions`` object wiring assets, checks, jobs, sensor, schedule.

Configuration comes from the environment so the UI, the daemon and the ``lgsid`` command line
see the same outputs:

- ``LGSID_HOME``: where Delta tables and artefacts live (default ``<repo>/.lgsid``);
- ``LGSID_SOURCE``: the dataset, as JSON for :class:`resources.DataSource` (default: the
  embedded demo world) or a path to a shared-schema folder;
- ``LGSID_LANDING``: the folder the new-items sensor watches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from assets import ALL_ASSETS, ALL_CHECKS
from orchestration.jobs import city_refresh_job, global_refit_job
from orchestration.schedules import weekly_refresh_schedule
from orchestration.sensors import new_items_sensor
from resources import DataSource, EncoderResource, LgsidHome, default_home, delta_io_manager


def source_from_env() -> DataSource:
    raw = os.environ.get("LGSID_SOURCE", "").strip()
    landing = os.environ.get("LGSID_LANDING") or None
    if not raw:
        return DataSource(landing_dir=landing)
    if raw.startswith("{"):
        cfg = json.loads(raw)
        cfg.setdefault("landing_dir", landing)
        return DataSource(**cfg)
    return DataSource(kind="folder", path=str(Path(raw).resolve()), landing_dir=landing)


def build_resources(home: str, source: DataSource, encoder: EncoderResource | None = None) -> dict:
    return {
        "io_manager": delta_io_manager(home),
        "home": LgsidHome(home=home),
        "source": source,
        "encoder": encoder or EncoderResource(),
    }


def build_defs(home: str | None = None, source: DataSource | None = None,
               encoder: EncoderResource | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[city_refresh_job, global_refit_job],
        sensors=[new_items_sensor],
        schedules=[weekly_refresh_schedule],
        resources=build_resources(home or default_home(), source or source_from_env(), encoder),
    )


defs = build_defs()
