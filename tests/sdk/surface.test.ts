// The rest of the method surface through the official client SDK, against the real gateway
// binary: run control (pauseRun, resumeRun, hijackRun, rewindRun), run reads (listRunDescendants,
// getNodeOutput, whatHappened, getRunDiff), tickets and docs, the subsystem reads (accounts,
// usage, memory, prompts, schema signature, browser sessions) and the legacy-only names.
// METHODS.md §3–§5, REWIND.md. The SDK's typed wrappers are used where it has one, `rpc()` for
// the other methods of its type map, and `rpcRaw()` (what `rpc()` forwards to) for legacy names
// the type map does not list. Run by `npm test` with the other files, or alone:
// `npm run test:surface`.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SmithersGatewayClient } from "@smithers-orchestrator/gateway-client";
import { startGateway, waitFor, type Gateway } from "./harness.ts";
import { RunStream, eventNames, expectRpcError, oneTo } from "./streams.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HEX64 = /^[0-9a-f]{64}$/;

let gateway: Gateway;
let client: SmithersGatewayClient;
/** A finished run of the `hello` example (one static task `greet`), shared by the read cases. */
let hello: string;

/** Polls getRun until `ready(run)` holds; returns that run. Bounded by `ms`. */
function runWhen(runId: string, what: string, ready: (run: any) => boolean, ms = 15_000): Promise<any> {
  return waitFor(
    `run ${runId} ${what}`,
    async () => {
      const run: any = await client.getRun({ runId });
      return ready(run) ? run : undefined;
    },
    ms,
  );
}

beforeAll(async () => {
  gateway = await startGateway();
  client = new SmithersGatewayClient({ baseUrl: gateway.baseUrl, token: gateway.token });
  const launched: any = await client.launchRun({ workflow: "hello" });
  hello = launched.runId;
  await runWhen(hello, "finished", (run) => run.status === "finished");
});

afterAll(async () => {
  await gateway?.stop();
});

describe("run control", () => {
  test("pauseRun stops the run after its in-flight task; resumeRun runs it to completion", async () => {
    // tests/sdk/workflows/pausable.toml: `first` takes ~2 s, then the static `second`.
    const launched: any = await client.launchRun({ workflow: "pausable" });
    const runId = launched.runId;
    expect(await client.pauseRun({ runId })).toEqual({ runId, status: "pausing" });

    // The in-flight task finishes, nothing new is scheduled, and the run settles as paused.
    const paused = await runWhen(runId, "no longer running", (run) => run.status !== "running", 20_000);
    expect(paused.status).toBe("paused");
    expect(typeof paused.pauseRequestedAtMs).toBe("number");
    expect(paused.summary).toEqual({ finished: 1 });
    expect(paused.runState).toMatchObject({ runId, state: "paused" });

    const stream = new RunStream(client, { runId, afterSeq: 0 });
    try {
      expect(await client.resumeRun({ runId })).toEqual({ runId, status: "resume_requested" });
      const completed = await stream.untilEvent("run.completed", undefined, 20_000);
      expect(completed.payload.payload).toEqual({ runId, status: "finished" });
      const events = stream.runEvents();
      expect(events.map((e) => e.seq)).toEqual(oneTo(5));
      expect(eventNames(events)).toEqual([
        ["node.started", "first"],
        ["node.finished", "first"],
        ["node.started", "second"],
        ["node.finished", "second"],
        ["run.completed", undefined],
      ]);
    } finally {
      await stream.close();
    }
    const finished = await runWhen(runId, "finished", (run) => run.status === "finished");
    expect(finished.summary).toEqual({ finished: 2 });
    expect(await client.resumeRun({ runId })).toEqual({ runId, status: "already_terminal" });
    await expectRpcError(client.pauseRun({ runId }), { code: "RUN_NOT_ACTIVE", status: 409, method: "pauseRun" });
  }, 60_000);

  test("hijackRun answers hijack-ready with a new session id and changes nothing", async () => {
    const before: any = await client.getRun({ runId: hello });
    const first: any = await client.hijackRun({ runId: hello });
    expect(first).toEqual({ runId: hello, status: "hijack-ready", sessionId: expect.stringMatching(UUID) });
    const second: any = await client.hijackRun({ runId: hello });
    expect(second.sessionId).toMatch(UUID);
    expect(second.sessionId).not.toBe(first.sessionId);
    const after: any = await client.getRun({ runId: hello });
    expect(after.status).toBe("finished");
    expect(after.hijackRequestedAtMs).toBe(before.hijackRequestedAtMs);
    expect(after.hijackTarget).toBe(before.hijackTarget);
    await expectRpcError(client.hijackRun({ runId: "no-such-run" }), { code: "RunNotFound", method: "hijackRun" });
  }, 30_000);

  test("rewindRun to the latest frame is a no-op; to an earlier frame it is RewindFailed", async () => {
    const snapshot: any = await client.getDevToolsSnapshot({ runId: hello });
    const latest: number = snapshot.frameNo;
    expect(latest).toBeGreaterThanOrEqual(2);
    const frames: any[] = (await client.rpcRaw("frames.list", { runId: hello })) as any[];
    expect(Math.max(...frames.map((f) => f.frameNo))).toBe(latest);

    const jumped: any = await client.rewindRun({ runId: hello, frameNo: latest, confirm: true });
    expect(jumped).toEqual({
      ok: true,
      newFrameNo: latest,
      revertedSandboxes: 0,
      deletedFrames: 0,
      deletedAttempts: 0,
      invalidatedDiffs: 0,
      durationMs: expect.any(Number),
      effectBoundary: { blocking: [], revertible: [], warnings: [] },
    });

    const refused = await expectRpcError(client.rewindRun({ runId: hello, frameNo: latest - 1, confirm: true }), {
      code: "RewindFailed",
      status: 500,
      method: "rewindRun",
    });
    expect(refused.details).toMatchObject({ runId: hello });
    await expectRpcError(client.rewindRun({ runId: hello, frameNo: latest } as any), {
      code: "ConfirmationRequired",
      status: 400,
      method: "rewindRun",
    });

    // Nothing moved: the run is still finished at the same frame.
    const run: any = await client.getRun({ runId: hello });
    expect(run.status).toBe("finished");
    const after: any = await client.getDevToolsSnapshot({ runId: hello });
    expect(after.frameNo).toBe(latest);
  }, 30_000);
});

describe("run reads", () => {
  test("listRunDescendants, getNodeOutput, whatHappened and getRunDiff of a finished run", async () => {
    expect(await client.listRunDescendants({ runId: hello })).toEqual([
      { runId: hello, parentRunId: null, depth: 0 },
    ]);

    expect(await client.getNodeOutput({ runId: hello, nodeId: "greet", iteration: 0 })).toEqual({
      status: "produced",
      row: { message: "hello" },
      schema: { fields: [{ name: "message", type: "string", optional: false, nullable: false }] },
    });
    await expectRpcError(client.getNodeOutput({ runId: hello, nodeId: "absent", iteration: 0 }), {
      code: "NodeNotFound",
      status: 404,
      method: "getNodeOutput",
    });

    const happened: any = await client.whatHappened({ runId: hello });
    expect(happened).toMatchObject({
      runId: hello,
      nodeId: null,
      iteration: null,
      scope: "run",
      agentId: null,
      source: "facts",
    });
    expect(typeof happened.summary).toBe("string");
    expect(happened.summary.length).toBeGreaterThan(0);
    expect(typeof happened.generatedAtMs).toBe("number");
    expect(typeof happened.cached).toBe("boolean");

    await expectRpcError(client.getRunDiff({ runId: hello }), {
      code: "VcsError",
      status: 500,
      method: "getRunDiff",
      message: "Run has no immutable VCS base revision.",
    });
  }, 30_000);
});

describe("tickets and docs", () => {
  test("createTicket, listTickets, updateTicket, deleteTicket; the tombstone is in listDocs", async () => {
    const path = "sdk/surface.md";
    const created: any = await client.rpc("createTicket", { path, content: "hello" });
    expect(created).toEqual({
      path,
      kind: "ticket",
      content: "hello",
      // SHA-256 of "hello"
      contentHash: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
      status: null,
      updatedAtMs: expect.any(Number),
    });
    expect(await client.rpc("listTickets", {})).toEqual([created]);

    const updated: any = await client.rpc("updateTicket", { path, status: "done" });
    expect(updated).toMatchObject({ path, kind: "ticket", content: "hello", contentHash: created.contentHash, status: "done" });
    expect(updated.updatedAtMs).toBeGreaterThanOrEqual(created.updatedAtMs);

    expect(await client.rpc("deleteTicket", { path })).toEqual({ path, deleted: true });
    expect(await client.rpc("listTickets", {})).toEqual([]);
    await expectRpcError(client.rpc("updateTicket", { path, status: "again" }), {
      code: "NOT_FOUND",
      status: 404,
      method: "updateTicket",
    });
    await expectRpcError(client.rpc("deleteTicket", { path }), { code: "NOT_FOUND", status: 404, method: "deleteTicket" });

    expect(await client.rpc("listDocs", {})).toEqual([]);
    const docs: any[] = await client.rpc("listDocs", { filter: { includeDeleted: true } } as any);
    expect(docs).toEqual([
      {
        path,
        kind: "ticket",
        content: "hello",
        contentHash: created.contentHash,
        status: "done",
        updatedAtMs: updated.updatedAtMs,
        deletedAtMs: expect.any(Number),
      },
    ]);
  }, 30_000);
});

describe("subsystem reads", () => {
  test("accounts, usage, memory facts and prompts are empty; the schema signature is stable", async () => {
    expect(await client.rpc("listAccounts", {})).toEqual([]);
    expect(await client.rpc("listUsageReports", {})).toEqual([]);
    expect(await client.rpc("listMemoryFacts", {})).toEqual([]);
    expect(await client.rpc("listPrompts", {})).toEqual([]);

    const signature: any = await client.rpc("getSchemaSignature", {});
    expect(typeof signature.schemaVersion).toBe("string");
    expect(signature.schemaVersion.length).toBeGreaterThan(0);
    expect(signature.signature).toMatch(HEX64);
    const components = Object.values(signature.components ?? {});
    expect(components.length).toBeGreaterThan(0);
    for (const hash of components) expect(hash).toMatch(HEX64);
    expect(await client.rpc("getSchemaSignature", {})).toEqual(signature);
  }, 30_000);

  test("browser sessions: none listed, and a create without a source is InvalidRequest", async () => {
    expect(await client.listBrowserSessions()).toEqual([]);
    await expectRpcError(client.createBrowserSession({} as any), {
      code: "InvalidRequest",
      status: 400,
      method: "createBrowserSession",
    });
  }, 30_000);
});

describe("legacy names", () => {
  test("runs.pause on a finished run is RUN_NOT_ACTIVE", async () => {
    await expectRpcError(client.rpcRaw("runs.pause", { runId: hello }), {
      code: "RUN_NOT_ACTIVE",
      status: 409,
      method: "runs.pause",
    });
  }, 30_000);

  test("frames.list, attempts.list and listNodeStates return the hello run's rows", async () => {
    const snapshot: any = await client.getDevToolsSnapshot({ runId: hello });
    const frames: any[] = (await client.rpcRaw("frames.list", { runId: hello })) as any[];
    expect(frames.map((f) => f.frameNo).sort((a, b) => a - b)).toEqual(oneTo(snapshot.frameNo));
    for (const frame of frames) {
      expect(Object.keys(frame).sort()).toEqual(
        [
          "runId",
          "frameNo",
          "createdAtMs",
          "xmlJson",
          "xmlHash",
          "encoding",
          "mountedTaskIdsJson",
          "taskIndexJson",
          "note",
        ].sort(),
      );
      expect(frame.runId).toBe(hello);
      expect(typeof frame.createdAtMs).toBe("number");
      expect(typeof frame.xmlJson).toBe("string");
      expect(frame.xmlHash).toMatch(HEX64);
    }

    const attempts: any[] = (await client.rpcRaw("attempts.list", { runId: hello })) as any[];
    expect(attempts).toEqual([
      {
        runId: hello,
        nodeId: "greet",
        iteration: 0,
        attempt: 1,
        state: "finished",
        startedAtMs: expect.any(Number),
        finishedAtMs: expect.any(Number),
        heartbeatAtMs: null,
        heartbeatDataJson: null,
        errorJson: null,
        jjPointer: null,
        jjCwd: null,
        responseText: null,
        cached: false,
        metaJson: null,
      },
    ]);

    expect(await client.rpcRaw("listNodeStates", { runId: hello })).toEqual([
      {
        nodeId: "greet",
        iteration: 0,
        state: "finished",
        lastAttempt: 1,
        updatedAtMs: expect.any(Number),
        label: null,
        startedAtMs: attempts[0].startedAtMs,
        finishedAtMs: attempts[0].finishedAtMs,
      },
    ]);
  }, 30_000);
});
