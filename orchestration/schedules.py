"""Weekly refresh of every city partition."""

import dagster as dg

from assets.partitions import city_partitions
from orchestration.jobs import city_refresh_job


@dg.schedule(job=city_refresh_job, cron_schedule="0 2 * * 1", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every Monday 02:00 UTC: refresh every city. The trained models refit on "
                         "Mondays 04:00 UTC (weekly_refit_schedule, see orchestration/refit.py).")
def weekly_refresh_schedule(context: dg.ScheduleEvaluationContext):
    cities = sorted(context.instance.get_dynamic_partitions(city_partitions.name))
    if not cities:
        return dg.SkipReason("no city partitions yet: run `lgsid materialize` or the new-items sensor")
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(partition_key=c, run_key=f"weekly:{stamp}:{c}",
                          tags={"lgsid/trigger": "weekly-schedule"}) for c in cities]
