"""The maintenance job: compact and vacuum the Delta tables, prune old artefact versions.

Core: ``lgsid_pipeline/housekeeping.py``. Weekly (Sundays 03:00 UTC) once its schedule is
turned on; runnable any time from the UI or with ``dagster job execute -j maintenance_job``.
"""


import dagster as dg
from pydantic import Field

from assets import CITY_ASSET_KEYS
from lgsid_pipeline.housekeeping import (DEFAULT_KEEP_VERSIONS, DEFAULT_RETENTION_HOURS, maintain_delta_table,
                                         prune_artefact_versions)
from resources import LgsidHome


class MaintenanceConfig(dg.Config):
    keep_versions: int = Field(default=DEFAULT_KEEP_VERSIONS, ge=0, description="Artefact versions kept beside "
                               "the current one, per asset (the current version is never removed).")
    retention_hours: int = Field(default=DEFAULT_RETENTION_HOURS, ge=0, description="Delta vacuum retention: "
                                 "files referenced by any version newer than this stay.")
    enforce_retention: bool = Field(default=True, description="Refuse a retention below Delta's 7-day minimum.")
    dry_run: bool = Field(default=False, description="Report what would be pruned; delete nothing.")


@dg.op(description="Compact + vacuum every Delta table of the home, then prune old artefact versions.",
       tags={"lgsid/kind": "maintenance"})
def housekeeping(context: dg.OpExecutionContext, config: MaintenanceConfig, home: LgsidHome) -> dict:
    tables = {}
    if not config.dry_run:
        for key in CITY_ASSET_KEYS:
            name = key.to_user_string()
            if home.table_exists(name):
                tables[name] = maintain_delta_table(home.table_uri(name), retention_hours=config.retention_hours,
                                                    storage_options=home.delta_storage_options(),
                                                    enforce_retention=config.enforce_retention)
                context.log.info(f"{name}: {tables[name]}")
    report = prune_artefact_versions(home.root() / "artifacts", config.keep_versions, dry_run=config.dry_run)
    summary = {"tables": tables, "artefacts_removed": report.removed, "artefacts_kept": report.kept,
               "bytes_freed": report.bytes_freed, "dry_run": config.dry_run}
    context.add_output_metadata({"tables": dg.MetadataValue.json(tables),
                                 "artefacts_removed": dg.MetadataValue.json(report.removed),
                                 "bytes_freed": report.bytes_freed, "dry_run": config.dry_run})
    return summary


@dg.job(description="Housekeeping: Delta compaction and vacuum, and pruning of old artefact versions "
                    "(keeps the current one and the newest keep_versions).")
def maintenance_job():
    housekeeping()


@dg.schedule(job=maintenance_job, cron_schedule="0 3 * * 0", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every Sunday 03:00 UTC: the maintenance job.")
def weekly_maintenance_schedule(context: dg.ScheduleEvaluationContext):
    return dg.RunRequest(run_key=f"maintenance:{context.scheduled_execution_time:%Y-%m-%d}")
