"""Weekly refresh of every city partition, one run per batch of cities."""

import dagster as dg

from assets.partitions import batch_request_args, city_partitions
from lgsid_pipeline.partitions import city_batches
from orchestration.jobs import city_refresh_job


@dg.schedule(job=city_refresh_job, cron_schedule="0 2 * * 1", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every Monday 02:00 UTC: refresh every city. The trained models refit on "
                         "Mondays 04:00 UTC (weekly_refit_schedule, see orchestration/refit.py).")
def weekly_refresh_schedule(context: dg.ScheduleEvaluationContext):
    order = list(context.instance.get_dynamic_partitions(city_partitions.name))
    if not order:
        return dg.SkipReason("no city partitions yet: run `lgsid materialize` or the new-items sensor")
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    requests = []
    for batch in city_batches(order, order):  # one run per batch of cities, not one per city
        args = batch_request_args(batch)
        requests.append(dg.RunRequest(partition_key=args.get("partition_key"),
                                      run_key=f"weekly:{stamp}:{batch[0]}..{batch[-1]}",
                                      tags={"lgsid/trigger": "weekly-schedule", **args.get("tags", {})}))
    return requests
