// The official client SDK (@smithers-orchestrator/gateway-client 0.32.0, unmodified) against the
// real gateway binary: connect, listWorkflows, launchRun, streamRunEventsResilient (with a cut
// connection resumed without loss), an approval, a signal, and errors as GatewayRpcError.
// Run: `npm test` in tests/sdk (docs/TESTING.md); $SMITHERS_GATEWAY_BIN names the binary.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SmithersGatewayClient } from "@smithers-orchestrator/gateway-client";
import { SocketControl, startGateway, waitFor, within, type Gateway } from "./harness.ts";
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

/** Polls getRun until `ready(run)` holds; returns that run. */
function runWhen(runId: string, what: string, ready: (run: any) => boolean): Promise<any> {
  return waitFor(`run ${runId} ${what}`, async () => {
    const run: any = await client.getRun({ runId });
    return ready(run) ? run : undefined;
  });
}

describe("connect", () => {
  test("the SDK's WebSocket handshake succeeds and the socket answers RPCs", async () => {
    const connection = await within("connect", 10_000, client.connect());
    try {
      const health: any = await within("health over WebSocket", 10_000, connection.requestRaw("health", {}));
      expect(health.protocol).toBe(1);
      expect(health.workflowsLoaded).toBe(gateway.workflowKeys.length);
      expect(health.workflowsTotal).toBe(gateway.workflowKeys.length);
      expect(typeof health.uptimeMs).toBe("number");
      // The challenge sent on open, before the SDK's connect was read, is queued as an event.
      const events = connection.events();
      const first = await within("first queued event", 10_000, events.next());
      expect(first.done).toBe(false);
      expect(first.value.event).toBe("connect.challenge");
      expect(typeof first.value.payload.nonce).toBe("string");
    } finally {
      connection.close();
    }
  }, 30_000);

  test("a wrong token fails connect with UNAUTHORIZED", async () => {
    const stranger = new SmithersGatewayClient({ baseUrl: gateway.baseUrl, token: "sgw_not-a-token" });
    await expectRpcError(stranger.connect(), { code: "UNAUTHORIZED", method: "connect" });
  }, 30_000);
});

describe("HTTP RPC", () => {
  test("listWorkflows lists the workflows directory, sorted by key", async () => {
    const workflows: any[] = await client.listWorkflows();
    // The examples of workflows/ (approve, fanout-demo, hello, nightly, signal, slow, …) and relay.
    expect(gateway.workflowKeys).toContain("relay");
    expect(gateway.workflowKeys.length).toBeGreaterThanOrEqual(7);
    expect(workflows.map((w) => w.key)).toEqual(gateway.workflowKeys);
    expect(workflows.find((w) => w.key === "hello")).toEqual({
      key: "hello",
      description: "Say hello",
      hasUi: false,
      uiPath: null,
      system: false,
    });
    expect(await client.listWorkflows({ filter: { hasUi: true } })).toEqual([]);
  }, 30_000);
});

describe("runs", () => {
  test("launchRun, then streamRunEventsResilient delivers every event up to run.completed", async () => {
    const launched: any = await client.launchRun({ workflow: "slow", input: { n: 1 } });
    expect(launched).toEqual({ runId: expect.any(String), workflow: "slow", system: false });
    const runId = launched.runId;
    const stream = new RunStream(client, { runId, afterSeq: 0 });
    try {
      const completed = await stream.untilEvent("run.completed", undefined, 30_000);
      expect(completed.payload.payload).toEqual({ runId, status: "finished" });
      expect(completed.payload.runId).toBe(runId);
      expect(completed.payload.type).toBe("RunEvent");
      const events = stream.runEvents();
      expect(events.map((e) => e.seq)).toEqual(oneTo(11));
      const steps = ["step-1", "step-2", "step-3", "step-4", "step-5"];
      expect(eventNames(events)).toEqual([
        ...steps.flatMap((id): Array<[string, string | undefined]> => [
          ["node.started", id],
          ["node.finished", id],
        ]),
        ["run.completed", undefined],
      ]);
      expect(stream.reconnects).toEqual([]);
    } finally {
      await stream.close();
    }
    const run: any = await client.getRun({ runId });
    expect(run.status).toBe("finished");
    expect(run.workflowKey).toBe("slow");
    expect(run.summary).toEqual({ finished: 5 });
  }, 60_000);

  test("a resilient stream cut mid-run resumes from its last seq, without loss or duplicates", async () => {
    // `relay`: prep, signal `go`, middle, signal `finish`, report. The stream's socket is cut while
    // the run waits for `go`; new sockets are held until the run, signalled meanwhile, waits for
    // `finish`. So everything between is produced while the SDK has no socket, and only the
    // SDK's resume (afterSeq = last seq it saw) can bring it back.
    const sockets = new SocketControl();
    const streaming = new SmithersGatewayClient({
      baseUrl: gateway.baseUrl,
      token: gateway.token,
      WebSocket: sockets.WebSocket,
    });
    const { runId } = (await client.launchRun({ workflow: "relay" })) as any;
    // An SDK connection subscribed to the run sees its raw events: once it has seen
    // node.finished of `middle`, the gateway's window for the run holds it too.
    const observer = await within("observer connect", 10_000, client.connect({ subscribe: [runId] }));
    const observed = observer.events();
    let outage: Promise<unknown> | undefined;
    const stream = new RunStream(streaming, { runId, afterSeq: 0 }, () => {
      if (outage) return;
      outage = (async () => {
        try {
          await client.submitSignal({ runId, signalName: "go", data: { go: true } });
          for (;;) {
            const next = await within("node.finished of middle on the observer", 15_000, observed.next());
            if (next.done) throw new Error("observer socket closed");
            const { event, payload } = next.value;
            if (event === "node.finished" && payload?.runId === runId && payload?.nodeId === "middle") break;
          }
          return await runWhen(
            runId,
            "waiting for `finish`",
            (run) => run.status === "waiting-event" && run.summary?.finished === 3,
          );
        } finally {
          sockets.release();
        }
      })();
    });
    try {
      await stream.untilEvent("node.finished", "prep");
      await runWhen(runId, "waiting for `go`", (run) => run.status === "waiting-event");
      expect(stream.runEvents().map((e) => e.seq)).toEqual([1, 2]);
      sockets.hold();
      expect(sockets.cut()).toBe(1);

      await stream.untilEvent("node.finished", "middle");
      const duringOutage: any = await within("the outage's work", 20_000, outage!);
      expect(duringOutage.summary).toEqual({ finished: 3, "waiting-event": 1 });
      await client.submitSignal({ runId, signalName: "finish", data: { done: true } });
      const completed = await stream.untilEvent("run.completed");
      expect(completed.payload.payload).toEqual({ runId, status: "finished" });

      // One reconnection, for the closed stream, resuming after seq 2.
      expect(stream.reconnects.length).toBe(1);
      expect(stream.reconnects[0]).toMatchObject({
        runId,
        afterSeq: 2,
        attempt: 0,
        reason: "stream_closed",
      });
      expect(sockets.opened).toBe(2);
      // Every run event once, in order, nothing missing.
      const events = stream.runEvents();
      const seqs = events.map((e) => e.seq);
      expect(seqs).toEqual(oneTo(events.length));
      expect(eventNames(events)).toEqual([
        ["node.started", "prep"],
        ["node.finished", "prep"],
        ["node.finished", "go"],
        ["node.started", "middle"],
        ["node.finished", "middle"],
        ["node.finished", "finish"],
        ["node.started", "report"],
        ["node.finished", "report"],
        ["run.completed", undefined],
      ]);
      expect(stream.frames.some((f) => f.event === "run.gap_resync")).toBe(false);
      // Which socket carried what: 1 and 2 on the first; the rest on the second, whose
      // streamRunEvents answer shows the resume point and that the outage's events were already
      // in the window, so they came as replay.
      const seen = sockets.frames.filter((s) => s.frame.event === "run.event");
      expect(seen.filter((s) => s.socket === 1).map((s) => s.frame.payload.seq)).toEqual([1, 2]);
      expect(seen.filter((s) => s.socket === 2).map((s) => s.frame.payload.seq)).toEqual(
        oneTo(events.length).slice(2),
      );
      const resumed = sockets.frames.find(
        (s) => s.socket === 2 && s.frame.type === "res" && typeof s.frame.payload?.streamId === "string",
      );
      expect(resumed?.frame.payload).toMatchObject({ runId, afterSeq: 2 });
      const middleSeq = events.find((e) => e.event === "node.finished" && e.payload.nodeId === "middle").seq;
      expect(resumed!.frame.payload.currentSeq).toBe(middleSeq);
    } finally {
      sockets.release();
      observer.close();
      await stream.close();
    }
  }, 60_000);

  test("an approval is requested, decided with submitApproval, and the run completes", async () => {
    const { runId } = (await client.launchRun({ workflow: "approve" })) as any;
    const stream = new RunStream(client, { runId, afterSeq: 0 });
    try {
      const requested = await stream.untilEvent("approval.requested");
      expect(requested.payload.payload).toEqual({ runId, nodeId: "ship-it", iteration: 0 });
      const pending: any[] = await client.listApprovals({ filter: { runId } });
      expect(pending.length).toBe(1);
      expect(pending[0]).toMatchObject({
        runId,
        workflowKey: "approve",
        nodeId: "ship-it",
        iteration: 0,
        requestTitle: "Ship it?",
        requestSummary: "Artifact built",
        approvalMode: "gate",
      });
      const decided = await client.submitApproval({ runId, nodeId: "ship-it", approved: true, note: "ship" });
      expect(decided).toEqual({ runId, nodeId: "ship-it", iteration: 0, approved: true });
      const completed = await stream.untilEvent("run.completed");
      expect(completed.payload.payload).toEqual({ runId, status: "finished" });
      const events = stream.runEvents();
      expect(events.map((e) => e.seq)).toEqual(oneTo(events.length));
      const decision = events.find((e) => e.event === "approval.decided");
      expect(decision?.payload).toMatchObject({ runId, nodeId: "ship-it", iteration: 0, approved: true });
      expect(eventNames(events).slice(-3)).toEqual([
        ["node.started", "ship"],
        ["node.finished", "ship"],
        ["run.completed", undefined],
      ]);
    } finally {
      await stream.close();
    }
    expect(((await client.getRun({ runId })) as any).status).toBe("finished");
    expect(await client.listApprovals({ filter: { runId } })).toEqual([]);
    // Deciding again: the server's AlreadyDecided, with its detail fields, through the SDK.
    const again = await expectRpcError(client.submitApproval({ runId, nodeId: "ship-it", approved: false }), {
      code: "AlreadyDecided",
      status: 409,
      method: "submitApproval",
    });
    expect(again.message).toBe("Approval for ship-it has already been decided");
  }, 60_000);

  test("a signal delivered with submitSignal resumes the waiting run", async () => {
    const { runId } = (await client.launchRun({ workflow: "signal" })) as any;
    await runWhen(runId, "waiting for its signal", (run) => run.status === "waiting-event");
    const delivered: any = await client.submitSignal({ runId, signalName: "qa-passed", data: { ok: true } });
    expect(delivered).toEqual({
      runId,
      seq: 0,
      signalName: "qa-passed",
      correlationId: null,
      receivedAtMs: expect.any(Number),
    });
    const run = await runWhen(runId, "finished", (r) => r.status === "finished");
    expect(run.summary).toEqual({ finished: 2 });
    const output: any = await client.getNodeOutput({ runId, nodeId: "qa-passed", iteration: 0 });
    expect(output.status).toBe("produced");
    expect(output.row).toMatchObject({ ok: true });
  }, 60_000);
});

describe("errors", () => {
  test("server error codes reach the application as GatewayRpcError", async () => {
    await expectRpcError(client.getRun({ runId: "no-such-run" }), {
      code: "NOT_FOUND",
      status: 404,
      method: "getRun",
      message: "Run not found: no-such-run",
    });
    await expectRpcError(client.getRun({} as any), {
      code: "INVALID_REQUEST",
      status: 400,
      method: "getRun",
      message: "runId is required",
    });
    await expectRpcError(client.launchRun({ workflow: "no-such-workflow" }), {
      code: "NOT_FOUND",
      status: 404,
      method: "launchRun",
      message: "Unknown workflow: no-such-workflow",
    });
    await expectRpcError(client.rpcRaw("noSuchMethod", {}), {
      code: "METHOD_NOT_FOUND",
      status: 404,
      method: "noSuchMethod",
    });
    // WebSocket-only method over HTTP.
    await expectRpcError(client.rpcRaw("streamRunEvents", { runId: "no-such-run" }), {
      code: "INVALID_REQUEST",
      status: 400,
    });
    const stranger = new SmithersGatewayClient({ baseUrl: gateway.baseUrl, token: "sgw_not-a-token" });
    await expectRpcError(stranger.listWorkflows(), { code: "UNAUTHORIZED", status: 401, method: "listWorkflows" });
  }, 30_000);

  test("a stream on an unknown run fails with the server's RunNotFound", async () => {
    const iterator = client.streamRunEvents({ runId: "no-such-run" });
    await expectRpcError(iterator.next(), { code: "RunNotFound", method: "streamRunEvents" });
  }, 30_000);
});
