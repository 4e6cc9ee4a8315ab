// The generated TypeScript types with openapi-fetch against a running
// courier: creates a webhook, ingests an event over HTTP, reads the delivery
// log until the event's delivery to the new webhook has succeeded, and
// deletes the webhook.
//
//   clients/generate.sh && node target/clients/typescript/dist/example.js
//
// with COURIER_URL (default http://127.0.0.1:8080), COURIER_WORKSPACE,
// COURIER_API_KEY and RECEIVER_URL in the environment. The end-to-end test
// tests/e2e/clients.rs runs it against a courier of its own; it exits
// non-zero on any surprise. `tsc` checks it against the generated types, so
// a change of the document that breaks it fails before it runs.

import createClient from "openapi-fetch";
import { randomUUID } from "node:crypto";
import type { components, paths } from "./schema.js";

type EventType = components["schemas"]["EventType"];

function env(name: string, fallback?: string): string {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

function check(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new Error(`typescript client example failed: ${what}`);
  }
}

async function main(): Promise<void> {
  const ws = env("COURIER_WORKSPACE");
  const client = createClient<paths>({
    baseUrl: env("COURIER_URL", "http://127.0.0.1:8080"),
    headers: { Authorization: `Bearer ${env("COURIER_API_KEY")}` },
  });
  const orderCreated: EventType = "order.created";

  const created = await client.POST("/v1/workspaces/{ws}/webhooks", {
    params: { path: { ws } },
    body: {
      name: "typescript client",
      url: env("RECEIVER_URL"),
      events: [orderCreated],
    },
  });
  check(created.response.status === 201 && created.data !== undefined, `create: ${JSON.stringify(created.error)}`);
  const webhook = created.data.data;
  check(webhook.secret?.startsWith("whsec_") === true, "a generated secret");
  console.log(`typescript: created webhook ${webhook.id}`);

  const eventId = `evt_ts_${randomUUID().replaceAll("-", "")}`;
  const accepted = await client.POST("/v1/workspaces/{ws}/events", {
    params: { path: { ws } },
    body: { id: eventId, type: orderCreated, data: { order_id: "ts-1", total: "12.50" } },
  });
  check(accepted.response.status === 202 && accepted.data !== undefined, `ingest: ${JSON.stringify(accepted.error)}`);
  console.log(`typescript: ingested ${accepted.data.data.id}`);

  // The delivery log, newest first, filtered to the new webhook: wait for
  // the delivery of this event to succeed.
  const deadline = Date.now() + 30_000;
  let row: components["schemas"]["DeliveryView"] | undefined;
  for (;;) {
    const page = await client.GET("/v1/workspaces/{ws}/deliveries", {
      params: { path: { ws }, query: { first: 10, webhook: webhook.id } },
    });
    check(page.data !== undefined, `list: ${JSON.stringify(page.error)}`);
    row = page.data.data.items.find((d) => d.eventId === eventId);
    if (row?.status === "succeeded") {
      break;
    }
    check(Date.now() < deadline, `no succeeded delivery of ${eventId}: ${JSON.stringify(row)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  check(row.type === orderCreated && row.webhookId === webhook.id, JSON.stringify(row));

  const detail = await client.GET("/v1/workspaces/{ws}/deliveries/{id}", {
    params: { path: { ws, id: row.id } },
  });
  check(detail.data !== undefined, `get delivery: ${JSON.stringify(detail.error)}`);
  const attempts = detail.data.data.attemptLog;
  const last = attempts[attempts.length - 1]?.responseStatus;
  check(typeof last === "number" && last >= 200 && last < 300, JSON.stringify(attempts));
  console.log(`typescript: delivery ${row.id} ${row.status} after ${row.attempts} attempt(s)`);

  const deleted = await client.DELETE("/v1/workspaces/{ws}/webhooks/{id}", {
    params: { path: { ws, id: webhook.id } },
  });
  check(deleted.response.status === 204, `delete: ${deleted.response.status}`);

  // Errors come back typed too.
  const missing = await client.GET("/v1/workspaces/{ws}/webhooks/{id}", {
    params: { path: { ws, id: webhook.id } },
  });
  check(missing.response.status === 404 && missing.error?.error.code === "not_found", JSON.stringify(missing.error));
  console.log("typescript: ok");
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
