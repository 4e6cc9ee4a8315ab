"""The generated Python client against a running courier: creates a webhook,
ingests an event over HTTP, reads the delivery log until the event's
delivery to the new webhook has succeeded, and deletes the webhook.

    PYTHONPATH=target/clients/python target/tools/venv/bin/python \
        clients/python/example.py

with COURIER_URL (default http://127.0.0.1:8080), COURIER_WORKSPACE,
COURIER_API_KEY and RECEIVER_URL (where the webhook points: `courier receive`
listens on http://127.0.0.1:9999/hook) in the environment. The end-to-end test
tests/e2e/clients.rs runs it against a courier of its own and exits non-zero on
any surprise.
"""

import os
import sys
import time
import uuid

from courier_client import AuthenticatedClient
from courier_client.api.deliveries import get_delivery, list_deliveries
from courier_client.api.events import ingest
from courier_client.api.webhooks import create_webhook, delete_webhook, get_webhook
from courier_client.models import (
    DeliveryStatus,
    EnvelopeDeliveryDetail,
    EnvelopePageDeliveryView,
    EnvelopeWebhookView,
    ErrorEnvelope,
    EventType,
    NewEvent,
    NewEventData,
    NewWebhook,
)


def main() -> None:
    base_url = os.environ.get("COURIER_URL", "http://127.0.0.1:8080")
    ws = os.environ["COURIER_WORKSPACE"]
    client = AuthenticatedClient(base_url=base_url, token=os.environ["COURIER_API_KEY"])

    created = create_webhook.sync_detailed(
        ws,
        client=client,
        body=NewWebhook(
            name="python client",
            url=os.environ["RECEIVER_URL"],
            events=[EventType.ORDER_CREATED],
        ),
    )
    check(created.status_code == 201, f"create_webhook: {created.status_code} {created.content!r}")
    webhook = created.parsed
    check(isinstance(webhook, EnvelopeWebhookView), f"create_webhook: {webhook!r}")
    check(webhook.data.secret.startswith("whsec_"), "a generated secret")
    print(f"python: created webhook {webhook.data.id}")

    event_id = f"evt_py_{uuid.uuid4().hex}"
    accepted = ingest.sync_detailed(
        ws,
        client=client,
        body=NewEvent(
            id=event_id,
            type_=EventType.ORDER_CREATED,
            data=NewEventData.from_dict({"order_id": "py-1", "total": "12.50"}),
        ),
    )
    check(accepted.status_code == 202, f"ingest: {accepted.status_code} {accepted.content!r}")
    print(f"python: ingested {accepted.parsed.data.id}")

    # The delivery log, newest first, filtered to the new webhook: wait for
    # the delivery of this event to succeed.
    deadline = time.monotonic() + 30
    while True:
        page = list_deliveries.sync(
            ws, client=client, first=10, webhook=webhook.data.id
        )
        check(isinstance(page, EnvelopePageDeliveryView), f"list_deliveries: {page!r}")
        rows = [d for d in page.data.items if d.event_id == event_id]
        if rows and rows[0].status == DeliveryStatus.SUCCEEDED:
            break
        check(time.monotonic() < deadline, f"no succeeded delivery of {event_id}: {rows!r}")
        time.sleep(0.1)
    row = rows[0]
    check(row.type_ == EventType.ORDER_CREATED and row.webhook_id == webhook.data.id, repr(row))

    detail = get_delivery.sync(ws, row.id, client=client)
    check(isinstance(detail, EnvelopeDeliveryDetail), f"get_delivery: {detail!r}")
    attempts = detail.data.attempt_log
    check(len(attempts) >= 1 and 200 <= attempts[-1].response_status < 300, repr(attempts))
    print(f"python: delivery {row.id} {row.status.value} after {row.attempts} attempt(s)")

    deleted = delete_webhook.sync_detailed(ws, webhook.data.id, client=client)
    check(deleted.status_code == 204, f"delete_webhook: {deleted.status_code}")

    # Errors come back typed too.
    missing = get_webhook.sync(ws, webhook.data.id, client=client)
    check(isinstance(missing, ErrorEnvelope) and missing.error.code.value == "not_found", repr(missing))
    print("python: ok")


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"python client example failed: {what}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
