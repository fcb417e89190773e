#!/usr/bin/env python
"""Create (or replace) deltaferry's alerting automations on the Prefect server at
``PREFECT_API_URL``. Each calls one webhook (a Prefect ``Webhook`` block, stored as
``deltaferry-alerts``) with a JSON body saying what happened:

- ``deltaferry: run failed``: a ``deltaferry-sync`` flow run failed or crashed;
- ``deltaferry: retries rising``: a job's steps were retried ``--retries`` times within
  ``--retries-window`` seconds (``deltaferry.step.retried`` events);
- ``deltaferry: retry budget spent``: a step kept failing transiently until its retries
  were spent (``deltaferry.retries.exhausted``);
- ``deltaferry: nothing published``: a job that has published before published no batch
  (``deltaferry.batch.published``) within ``--quiet-window`` seconds — proactive, it fires
  on silence. A source with no changes is silent too: set the window to how long the
  source can legitimately stay unchanged;
- ``deltaferry: lag exceeded``: a table of a job with ``max_lag_seconds`` is further
  behind than that (``deltaferry.lag.exceeded``, sent after each run);
- ``deltaferry: no successful run``: a job completed no run (``deltaferry.run.completed``,
  sent with or without changes) within ``--run-window`` seconds: the schedule, the worker
  or every run is failing. Set it above the schedule interval plus a run's duration.

    python deployments/automations.py --webhook https://hooks.example.com/deltaferry
    python deployments/automations.py --webhook http://127.0.0.1:9000/hook --allow-private-urls

Automations are replaced by name, so running it again updates them.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect.automations import Automation, CallWebhook, EventTrigger, Posture
from prefect.blocks.webhook import Webhook

BLOCK = "deltaferry-alerts"
FLOW = "deltaferry-sync"
BODY = (
    '{"alert": "%s", "event": "{{ event.event }}", "resource": "{{ event.resource.id }}", '
    "\"job\": \"{{ event.resource.get('deltaferry.job', '') }}\", "
    "\"table\": \"{{ event.resource.get('deltaferry.table', '') }}\", "
    '"occurred": "{{ event.occurred }}", "automation": "{{ automation.name }}"}'
)


def automations(webhook_block_id: object, args: argparse.Namespace) -> list[Automation]:
    def call(alert: str) -> list[CallWebhook]:
        return [CallWebhook(block_document_id=webhook_block_id, payload=BODY % alert)]

    return [
        Automation(
            name="deltaferry: run failed",
            description="A deltaferry-sync flow run failed or crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=call("run failed"),
        ),
        Automation(
            name="deltaferry: retries rising",
            description=f"{args.retries} step retries of one job within {args.retries_window} s.",
            trigger=EventTrigger(
                expect={"deltaferry.step.retried"},
                match={"prefect.resource.id": "deltaferry.*"},
                for_each={"deltaferry.job"},
                posture=Posture.Reactive,
                threshold=args.retries,
                within=timedelta(seconds=args.retries_window),
            ),
            actions=call("retries rising"),
        ),
        Automation(
            name="deltaferry: retry budget spent",
            description="A step kept failing transiently until its retries were spent.",
            trigger=EventTrigger(
                expect={"deltaferry.retries.exhausted"},
                match={"prefect.resource.id": "deltaferry.*"},
                for_each={"deltaferry.job"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=call("retry budget spent"),
        ),
        Automation(
            name="deltaferry: lag exceeded",
            description="A table is further behind than its job's max_lag_seconds.",
            trigger=EventTrigger(
                expect={"deltaferry.lag.exceeded"},
                match={"prefect.resource.id": "deltaferry.*"},
                for_each={"deltaferry.job", "deltaferry.table"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=call("lag exceeded"),
        ),
        Automation(
            name="deltaferry: nothing published",
            description=f"A job published no batch within {args.quiet_window} s.",
            trigger=EventTrigger(
                after={"deltaferry.batch.published"},
                expect={"deltaferry.batch.published"},
                match={"prefect.resource.id": "deltaferry.*"},
                for_each={"deltaferry.job"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=args.quiet_window),
            ),
            actions=call("nothing published"),
        ),
        Automation(
            name="deltaferry: no successful run",
            description=f"A job completed no run within {args.run_window} s.",
            trigger=EventTrigger(
                after={"deltaferry.run.completed"},
                expect={"deltaferry.run.completed"},
                match={"prefect.resource.id": "deltaferry.*"},
                for_each={"deltaferry.job"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=args.run_window),
            ),
            actions=call("no successful run"),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--webhook", required=True, help="URL the alerts are POSTed to")
    ap.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="allow a webhook on a private or loopback address",
    )
    ap.add_argument("--retries", type=int, default=5)
    ap.add_argument("--retries-window", type=int, default=3600)
    ap.add_argument("--quiet-window", type=int, default=86400)
    ap.add_argument("--run-window", type=int, default=3600)
    args = ap.parse_args(argv)

    block = Webhook(
        method="POST",
        url=args.webhook,
        headers={"Content-Type": "application/json"},
        allow_private_urls=args.allow_private_urls,
    )
    block_id = block.save(BLOCK, overwrite=True)
    for automation in automations(block_id, args):
        try:
            Automation.read(name=automation.name).delete()
        except ValueError:
            pass  # not there yet
        created = automation.create()
        print(f"{created.name}: {created.id}")


if __name__ == "__main__":
    main()
