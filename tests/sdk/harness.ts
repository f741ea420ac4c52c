// Test harness for the official client SDK suite: starts the real gateway binary on
// 127.0.0.1:0 with a temporary data directory and workflows directory, gives bounded waits, and
// a WebSocket class to inject into the SDK (its documented `WebSocket` option) that lets a test
// cut the SDK's socket and hold its reconnection. The SDK itself is used unchanged.

import { spawn, type ChildProcess } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const here = import.meta.dir;
export const repoRoot = resolve(here, "..", "..");

/** The gateway binary: $SMITHERS_GATEWAY_BIN, else <target>/debug/smithers-gateway. */
export function gatewayBinary(): string {
  const fromEnv = process.env.SMITHERS_GATEWAY_BIN;
  if (fromEnv) return resolve(fromEnv);
  const target = process.env.CARGO_TARGET_DIR ?? join(repoRoot, "target");
  return resolve(target, "debug", "smithers-gateway");
}

/** Rejects with a message naming `what` when `promise` does not settle within `ms`. */
export function within<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Polls `probe` until it returns something other than undefined; bounded by `ms`.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  ms = 15_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(25);
  }
}

export type Gateway = {
  baseUrl: string;
  token: string;
  dataDir: string;
  workflowsDir: string;
  /** The workflow keys the gateway was given (`name`, else the file stem), sorted. */
  workflowKeys: string[];
  stderr: () => string;
  stop: () => Promise<void>;
};

/**
 * Starts `smithers-gateway serve` on 127.0.0.1:0 with one worker, a fresh data directory and a
 * workflows directory holding the repo's examples plus tests/sdk/workflows. Resolves once the
 * gateway printed its address and admin token.
 */
export async function startGateway(): Promise<Gateway> {
  const binary = gatewayBinary();
  const dataDir = mkdtempSync(join(tmpdir(), "sgw-sdk-data-"));
  const workflowsDir = mkdtempSync(join(tmpdir(), "sgw-sdk-wf-"));
  const workflowKeys: string[] = [];
  for (const dir of [join(repoRoot, "workflows"), join(here, "workflows")]) {
    for (const name of readdirSync(dir)) {
      if (!name.endsWith(".toml")) continue;
      cpSync(join(dir, name), join(workflowsDir, name));
      // Top-level keys come before the first table header.
      const top = readFileSync(join(dir, name), "utf8").split(/^\[/m)[0];
      const declared = /^name\s*=\s*"([^"]+)"/m.exec(top);
      workflowKeys.push(declared ? declared[1] : name.slice(0, -".toml".length));
    }
  }
  workflowKeys.sort();
  const child: ChildProcess = spawn(
    binary,
    [
      "serve",
      "--listen",
      "127.0.0.1:0",
      "--workers",
      "1",
      "--data-dir",
      dataDir,
      "--workflows",
      workflowsDir,
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } },
  );
  let stdout = "";
  let stderr = "";
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exit = new Promise<void>((resolveExit) => {
    child.once("exit", (code, signal) => {
      exited = { code, signal };
      resolveExit();
    });
  });
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  child.stderr?.on("data", (chunk) => {
    stderr += chunk.toString();
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
  });
  const ready = new Promise<{ baseUrl: string; token: string }>((resolveReady, rejectReady) => {
    child.once("error", (error) => rejectReady(new Error(`cannot start ${binary}: ${error.message}`)));
    child.stdout?.on("data", (chunk) => {
      stdout += chunk.toString();
      const listening = /smithers-gateway listening on (http:\/\/\S+)/.exec(stdout);
      const token = /admin token \([^)]*\): (\S+)/.exec(stdout);
      if (listening && token) resolveReady({ baseUrl: listening[1], token: token[1] });
    });
    void exit.then(() =>
      rejectReady(new Error(`gateway exited before it was ready (${JSON.stringify(exited)}):\n${stderr}`)),
    );
  });
  const cleanup = () => {
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(workflowsDir, { recursive: true, force: true });
  };
  const stop = async () => {
    if (!exited) {
      child.kill("SIGTERM");
      try {
        await within("gateway shutdown after SIGTERM", 10_000, exit);
      } catch {
        child.kill("SIGKILL");
        await within("gateway exit after SIGKILL", 5_000, exit);
      }
    }
    process.removeListener("exit", killOnExit);
    cleanup();
  };
  try {
    const { baseUrl, token } = await within(`gateway start (${binary})`, 20_000, ready);
    return { baseUrl, token, dataDir, workflowsDir, workflowKeys, stderr: () => stderr, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

type Gate = { promise: Promise<void>; release: () => void };

function openGate(): Gate {
  return { promise: Promise.resolve(), release: () => {} };
}

function closedGate(): Gate {
  let release = () => {};
  const promise = new Promise<void>((r) => {
    release = r;
  });
  return { promise, release };
}

/** A frame as the injected socket saw it arrive, with the number of the socket (from 1). */
export type SeenFrame = { socket: number; frame: any };

/**
 * Supplies the SDK's `WebSocket` option. Each socket is a thin EventTarget over the runtime's own
 * WebSocket; it forwards `open`, `message`, `error` and `close` unchanged, and records every
 * frame received (for assertions about which socket delivered what). The test can:
 * - `cut()`: close the SDK's open sockets from the client side, as a dropped connection would;
 * - `hold()` / `release()`: make new sockets wait before they dial, so that the server produces
 *   events while the SDK has no socket at all (no timing involved).
 */
export class SocketControl {
  private gate: Gate = openGate();
  private live = new Set<{ ws: WebSocket }>();
  opened = 0;
  readonly frames: SeenFrame[] = [];

  hold(): void {
    this.gate = closedGate();
  }

  release(): void {
    const gate = this.gate;
    this.gate = openGate();
    gate.release();
  }

  /** Closes every open socket (code 4000) and returns how many were cut. */
  cut(): number {
    const sockets = [...this.live];
    for (const socket of sockets) socket.ws.close(4000, "test: connection cut");
    return sockets.length;
  }

  /** The class to pass as `new SmithersGatewayClient({ WebSocket: control.WebSocket })`. */
  get WebSocket(): typeof WebSocket {
    const control = this;
    const Real = globalThis.WebSocket;
    class ControlledWebSocket extends EventTarget {
      static readonly CONNECTING = 0;
      static readonly OPEN = 1;
      static readonly CLOSING = 2;
      static readonly CLOSED = 3;
      readonly url: string;
      readyState = 0;
      private real?: { ws: WebSocket };
      private closeWanted?: { code?: number; reason?: string };

      constructor(url: string | URL) {
        super();
        this.url = String(url);
        void control.gate.promise.then(() => this.dial());
      }

      private dial() {
        if (this.closeWanted) {
          this.readyState = 3;
          this.dispatchEvent(new CloseEvent("close", { code: 1006, reason: "", wasClean: false }));
          return;
        }
        const ws = new Real(this.url);
        const entry = { ws };
        this.real = entry;
        const number = ++control.opened;
        ws.addEventListener("open", () => {
          control.live.add(entry);
          this.readyState = 1;
          this.dispatchEvent(new Event("open"));
        });
        ws.addEventListener("message", (event) => {
          if (typeof event.data === "string") {
            try {
              control.frames.push({ socket: number, frame: JSON.parse(event.data) });
            } catch {
              control.frames.push({ socket: number, frame: event.data });
            }
          }
          this.dispatchEvent(new MessageEvent("message", { data: event.data }));
        });
        ws.addEventListener("error", () => this.dispatchEvent(new Event("error")));
        ws.addEventListener("close", (event) => {
          control.live.delete(entry);
          this.readyState = 3;
          this.dispatchEvent(
            new CloseEvent("close", { code: event.code, reason: event.reason, wasClean: event.wasClean }),
          );
        });
      }

      send(data: string) {
        if (!this.real || this.readyState !== 1) throw new Error("WebSocket is not open");
        this.real.ws.send(data);
      }

      close(code?: number, reason?: string) {
        if (this.readyState >= 2) return;
        this.closeWanted = { code, reason };
        if (this.real) {
          this.readyState = 2;
          this.real.ws.close(code ?? 1000, reason);
        }
      }
    }
    return ControlledWebSocket as unknown as typeof WebSocket;
  }
}
