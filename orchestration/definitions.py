"""The code location: one ``Definitions`` object wiring assets, checks, jobs, sensor, schedule.

Configuration comes from the environment so the UI, the daemon and the ``lgsid`` command line
see the same outputs:

- ``LGSID_HOME``: where artefacts (and by default the Delta tables) live (default ``<repo>/.lgsid``);
- ``LGSID_TABLES_URI``: where the Delta tables live instead, a local path or ``s3://bucket/prefix``;
  ``LGSID_STORAGE_OPTIONS``: delta-rs/polars storage options for it, as JSON (credentials belong in
  the standard ``AWS_*`` environment variables, not here);
- ``LGSID_EXECUTOR``: ``multiprocess`` (default), ``in_process`` or ``k8s`` (one Kubernetes pod per
  step; the encoder-bound steps on GPU nodes, see ``orchestration/jobs.py``);
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
from orchestration.jobs import city_refresh_job, executor_from_env
from orchestration.maintenance import maintenance_job, weekly_maintenance_schedule
from orchestration.refit import (global_refit_job, refit_chain_sensor, refit_city_stage_job,
                                  refit_global_stage_job, weekly_refit_schedule)
from orchestration.schedules import weekly_refresh_schedule
from orchestration.sensors import new_items_sensor
from resources import DataSource, EncoderResource, LgsidHome, default_home, delta_io_manager
from resources.home import default_tables_uri
from resources.uris import default_storage_options, normalize_storage_options


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


def build_resources(home: str, source: DataSource, encoder: EncoderResource | None = None, *,
                    tables_uri: str | None = None, storage_options: dict[str, str] | None = None) -> dict:
    """Resources for one home. ``tables_uri``/``storage_options`` default to
    ``$LGSID_TABLES_URI``/``$LGSID_STORAGE_OPTIONS`` (no tables URI: ``<home>/delta``)."""
    tables_uri = tables_uri if tables_uri is not None else default_tables_uri()
    options = normalize_storage_options(storage_options) if storage_options is not None else default_storage_options()
    return {
        "io_manager": delta_io_manager(home, tables_uri, options),
        "home": LgsidHome(home=home, tables_uri=tables_uri, storage_options=options),
        "source": source,
        "encoder": encoder or EncoderResource(),
    }


def build_defs(home: str | None = None, source: DataSource | None = None,
               encoder: EncoderResource | None = None, *, tables_uri: str | None = None,
               storage_options: dict[str, str] | None = None, executor: str | None = None) -> dg.Definitions:
    """The code location. ``executor`` (default ``$LGSID_EXECUTOR``) picks the executor of every
    job: ``k8s`` runs each step as its own Kubernetes Job (see ``orchestration.jobs.k8s_executor``)."""
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[city_refresh_job, global_refit_job, refit_global_stage_job, refit_city_stage_job, maintenance_job],
        sensors=[new_items_sensor, refit_chain_sensor],
        schedules=[weekly_refresh_schedule, weekly_refit_schedule, weekly_maintenance_schedule],
        resources=build_resources(home or default_home(), source or source_from_env(), encoder,
                                  tables_uri=tables_uri, storage_options=storage_options),
        executor=executor_from_env(executor),
    )


defs = build_defs()
