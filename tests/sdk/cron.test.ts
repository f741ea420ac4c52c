// Cron through the official client SDK: cronRun (by workflow and by cron id), cronCreate,
// cronList, cronDelete and their errors, against the real gateway binary.
// METHODS.md §3.24–3.27. Run by `npm test` with sdk.test.ts, or alone: `npm run test:cron`.

import { afterAll, beforeAll, expect, test } from "bun:test";
import { SmithersGatewayClient } from "@smithers-orchestrator/gateway-client";
import { startGateway, waitFor, type Gateway } from "./harness.ts";
import { RunStream, eventNames, expectRpcError, oneTo } from "./streams.ts";

let gateway: Gateway;
let client: SmithersGatewayClient;

beforeAll(async () => {
  gateway = await startGateway();
  client = new SmithersGatewayClient({ baseUrl: gateway.baseUrl, token: gateway.token });
});

afterAll(async () => {
  await gateway?.stop();
});

function finished(runId: string): Promise<any> {
  return waitFor(`run ${runId} finished`, async () => {
    const run: any = await client.getRun({ runId });
    return run.status === "finished" ? run : undefined;
  });
}

test("cronRun by workflow starts a run whose events stream to run.completed", async () => {
  const started: any = await client.cronRun({ workflow: "slow" });
  expect(started).toEqual({ runId: expect.any(String), workflow: "slow", system: false });
  const stream = new RunStream(client, { runId: started.runId, afterSeq: 0 });
  try {
    const completed = await stream.untilEvent("run.completed", undefined, 30_000);
    expect(completed.payload.payload).toEqual({ runId: started.runId, status: "finished" });
    const events = stream.runEvents();
    expect(events.map((e) => e.seq)).toEqual(oneTo(11));
    expect(eventNames(events)[0]).toEqual(["node.started", "step-1"]);
  } finally {
    await stream.close();
  }
  const run = await finished(started.runId);
  expect(run.workflowKey).toBe("slow");
}, 60_000);

test("a cron created with cronCreate is listed, run with cronRun, and deleted", async () => {
  // The example `nightly` declares a schedule: its row is there from the start.
  const initial: any[] = await client.cronList();
  expect(initial.find((row) => row.workflow === "nightly")).toMatchObject({
    pattern: "0 3 * * *",
    workflowPath: "gateway:nightly",
    enabled: true,
  });

  const created: any = await client.cronCreate({ cronId: "sdk-cron", workflow: "hello", pattern: "0 4 * * *" });
  expect(created).toMatchObject({
    cronId: "sdk-cron",
    pattern: "0 4 * * *",
    workflowPath: "gateway:hello",
    enabled: true,
    lastRunAtMs: null,
    errorJson: null,
    workflow: "hello",
  });
  expect(typeof created.nextRunAtMs).toBe("number");
  const listed: any[] = await client.cronList({ filter: { workflow: "hello" } });
  expect(listed.map((row) => row.cronId)).toEqual(["sdk-cron"]);

  const started: any = await client.cronRun({ cronId: "sdk-cron" });
  expect(started).toEqual({ runId: expect.any(String), workflow: "hello", system: false });
  const run = await finished(started.runId);
  expect(run.summary).toEqual({ finished: 1 });
  const after: any[] = await client.cronList({ filter: { workflow: "hello" } });
  expect(typeof after[0].lastRunAtMs).toBe("number");

  expect(await client.cronDelete({ cronId: "sdk-cron" })).toEqual({ cronId: "sdk-cron", removed: true });
  expect(await client.cronList({ filter: { workflow: "hello" } })).toEqual([]);
}, 60_000);

test("cron errors reach the application as GatewayRpcError", async () => {
  await expectRpcError(client.cronRun({} as any), { code: "INVALID_REQUEST", status: 400, method: "cronRun" });
  await expectRpcError(client.cronDelete({ cronId: "no-such-cron" }), {
    code: "NOT_FOUND",
    status: 404,
    method: "cronDelete",
  });
  await expectRpcError(client.cronCreate({ workflow: "no-such-workflow", pattern: "0 3 * * *" }), {
    code: "NOT_FOUND",
    status: 404,
    method: "cronCreate",
  });
}, 30_000);
