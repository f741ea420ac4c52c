// Helpers around the SDK's streams and errors, shared by the test files. They only drive the SDK
// (its iterator and its error class); they never re-implement the protocol.

import { expect } from "bun:test";
import { GatewayRpcError, SmithersGatewayClient } from "@smithers-orchestrator/gateway-client";
import { within } from "./harness.ts";

/**
 * A `streamRunEventsResilient` iterator consumed step by step with bounded waits. Every frame
 * the SDK yields is kept in `frames`; `runEvents()` gives the `run.event` payloads.
 */
export class RunStream {
  readonly frames: any[] = [];
  readonly reconnects: any[] = [];
  private readonly controller = new AbortController();
  private readonly iterator: AsyncGenerator<any>;

  constructor(
    client: SmithersGatewayClient,
    params: { runId: string; afterSeq?: number },
    onReconnect?: (event: any) => void,
  ) {
    this.iterator = client.streamRunEventsResilient(params, {
      signal: this.controller.signal,
      onReconnect: (event: any) => {
        this.reconnects.push(event);
        onReconnect?.(event);
      },
    });
  }

  /** Frames until (and including) the first one `matches` accepts; bounded by `ms` overall. */
  async until(what: string, matches: (frame: any) => boolean, ms = 20_000): Promise<any> {
    const deadline = Date.now() + ms;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${this.describe()}`);
      const step = await within(`${what}; frames: ${this.describe()}`, left, this.iterator.next());
      if (step.done) throw new Error(`stream ended before ${what}; frames: ${this.describe()}`);
      this.frames.push(step.value);
      if (matches(step.value)) return step.value;
    }
  }

  /** Waits for the `run.event` whose inner event is `event` (and node, when given). */
  untilEvent(event: string, nodeId?: string, ms?: number): Promise<any> {
    return this.until(
      nodeId ? `${event} of ${nodeId}` : event,
      (frame) =>
        frame.event === "run.event" &&
        frame.payload?.event === event &&
        (nodeId === undefined || frame.payload?.payload?.nodeId === nodeId),
      ms,
    );
  }

  runEvents(): any[] {
    return this.frames.filter((frame) => frame.event === "run.event").map((frame) => frame.payload);
  }

  describe(): string {
    return JSON.stringify(
      this.frames
        .filter((f) => f.event !== "run.heartbeat")
        .map((f) => `${f.event}:${f.payload?.seq ?? ""}:${f.payload?.event ?? ""}:${f.payload?.payload?.nodeId ?? ""}`),
    );
  }

  /** Stops the stream (abort, then let the generator finish); never hangs. */
  async close(): Promise<void> {
    this.controller.abort();
    try {
      await within("closing the stream", 5_000, this.iterator.return(undefined));
    } catch {
      // A generator that was still waiting ends through the abort signal; nothing to do.
    }
  }
}

/** `[event, nodeId]` of each `run.event` payload, for exact sequence assertions. */
export function eventNames(events: any[]): Array<[string, string | undefined]> {
  return events.map((e) => [e.event, e.payload?.nodeId]);
}

/** 1, 2, …, n. */
export function oneTo(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}

/** Awaits `promise`, expects a GatewayRpcError and checks the given fields; returns the error. */
export async function expectRpcError(
  promise: Promise<unknown>,
  expected: { code: string; status?: number; method?: string; message?: string },
): Promise<GatewayRpcError> {
  const outcome = await within(
    `${expected.method ?? "call"} to fail with ${expected.code}`,
    15_000,
    promise.then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    ),
  );
  if (outcome.ok) throw new Error(`expected ${expected.code}, got a success: ${JSON.stringify(outcome.value)}`);
  const caught = outcome.error;
  if (!(caught instanceof GatewayRpcError)) throw caught;
  const error = caught as GatewayRpcError;
  expect(error.code).toBe(expected.code);
  if ("status" in expected) expect(error.status).toBe(expected.status);
  if (expected.method !== undefined) expect(error.method).toBe(expected.method);
  if (expected.message !== undefined) expect(error.message).toBe(expected.message);
  return error;
}
