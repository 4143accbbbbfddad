/**
 * A real idem for the client tests: a fresh database on the PostgreSQL in DATABASE_URL
 * (scripts/test.sh starts one when none is given), the Stripe simulator, a worker that can
 * be killed with SIGKILL, and `idem serve` with scoped tokens — the real binary each.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createWriteStream, existsSync, mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import pg from "pg";

export const REPO = resolve(fileURLToPath(import.meta.url), "../../../../..");

function idemBin(): string {
  const target = process.env.CARGO_TARGET_DIR ?? join(homedir(), ".cache/idem-target");
  const bin = process.env.IDEM_BIN ?? join(target, "debug", "idem");
  if (!existsSync(bin))
    throw new Error(`no idem binary at ${bin}: build it (cargo build --bin idem) or set IDEM_BIN; ./scripts/test.sh does both`);
  return bin;
}

/** Ports this process handed out: the OS may offer a just-closed port again. */
const given = new Set<number>();

async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((ok, fail) => {
      const s = createServer();
      s.once("error", fail);
      s.listen(0, "127.0.0.1", () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => ok(p));
      });
    });
    if (!given.has(port)) {
      given.add(port);
      return port;
    }
  }
}

async function waitHttp(url: string, proc: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}`);
    try {
      // Only a 2xx: another server on the port (a collision) answers something else.
      if ((await fetch(url, { signal: AbortSignal.timeout(1000) })).ok) return;
      await new Promise((r) => setTimeout(r, 100));
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${what} did not answer at ${url} within 30 s`);
}

export interface Effect {
  effect: string;
  id: string;
  idem_action_id: string | null;
}

export class Stack {
  worker: ChildProcess | undefined;
  readonly procs: ChildProcess[] = [];
  workers = 0;

  private constructor(
    readonly bin: string,
    readonly server: string,
    readonly dbName: string,
    readonly databaseUrl: string,
    readonly api: string,
    readonly stripe: string,
    readonly logs: string,
    readonly agentToken: string,
    readonly adminToken: string,
  ) {}

  static async start(): Promise<Stack> {
    const server = process.env.DATABASE_URL;
    if (!server)
      throw new Error("DATABASE_URL is not set: start PostgreSQL (./scripts/test.sh starts one of its own and runs these tests) or point DATABASE_URL at one");
    const bin = idemBin();
    const dbName = `idem_ts_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
    const admin = new pg.Client({ connectionString: server });
    await admin.connect();
    await admin.query(`CREATE DATABASE "${dbName}"`); // a generated name, not input
    await admin.end();
    const u = new URL(server);
    u.pathname = `/${dbName}`;
    const url = u.toString();
    execFileSync(bin, ["migrate", "--database-url", url], { stdio: "pipe" });
    const token = (name: string, scopes: string[]) =>
      execFileSync(bin, ["tokens", "create", "--database-url", url, "--name", name, ...scopes.flatMap((s) => ["--scope", s])])
        .toString()
        .trim()
        .split("\n")
        .at(-1)!;
    const stripe = `http://127.0.0.1:${await freePort()}`;
    const api = `http://127.0.0.1:${await freePort()}`;
    const s = new Stack(
      bin, server, dbName, url, api, stripe,
      mkdtempSync(join(tmpdir(), "idem-ts-logs-")),
      token("ts-agent", ["submit", "read"]),
      token("ts-admin", ["read", "approve"]),
    );
    // The simulator is the lab's (`idem-lab sim`); the operator binary has none.
    const lab = join(dirname(bin), "idem-lab");
    const sim = s.spawn("stripe-sim", ["sim", "stripe", "--listen", stripe.slice("http://".length)], lab);
    await waitHttp(`${stripe}/_sim/ledger`, sim, "stripe simulator");
    s.startWorker();
    const srv = s.spawn("serve", ["serve", "--stripe-base", stripe, "--listen", api.slice("http://".length)]);
    await waitHttp(`${api}/v1/health`, srv, "idem serve");
    return s;
  }

  spawn(name: string, args: string[], binary?: string): ChildProcess {
    const log = createWriteStream(join(this.logs, `${name}.log`), { flags: "a" });
    const p = spawn(binary ?? this.bin, args, { env: { ...process.env, DATABASE_URL: this.databaseUrl }, stdio: ["ignore", "pipe", "pipe"] });
    p.stdout?.pipe(log);
    p.stderr?.pipe(log);
    this.procs.push(p);
    return p;
  }

  startWorker(): void {
    this.workers += 1;
    // Short call timeout and settle time: a killed worker's lease ends, and its doubt is
    // reconciled, in seconds rather than Stripe's documented minutes.
    this.worker = this.spawn(`worker-${this.workers}`, [
      "worker", "--id", `ts-worker-${this.workers}`, "--stripe-base", this.stripe,
      "--call-timeout-ms", "2000", "--settle-ms", "1000", "--poll-interval-ms", "50", "--sweep-interval-ms", "200",
    ]);
  }

  /** SIGKILL: no shutdown, leases left behind, the partner call cut mid-flight. */
  async killWorker(): Promise<void> {
    const w = this.worker!;
    const gone = new Promise((r) => w.once("exit", r));
    w.kill("SIGKILL");
    await gone;
    this.worker = undefined;
  }

  /** The Stripe simulator's ledger entries caused by one action: real effects. */
  async effects(actionId: string): Promise<Effect[]> {
    const r = (await (await fetch(`${this.stripe}/_sim/ledger`)).json()) as { effects: Effect[] };
    return r.effects.filter((e) => e.idem_action_id === actionId);
  }

  async requestsSeen(): Promise<number> {
    const r = (await (await fetch(`${this.stripe}/_sim/requests`)).json()) as { requests: unknown[] };
    return r.requests.length;
  }

  /** The next requests' faults, in order (e.g. `[{ delay: 3000 }]`). */
  async script(faults: unknown[]): Promise<void> {
    const r = await fetch(`${this.stripe}/_sim/script`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(faults) });
    if (!r.ok) throw new Error(`script: ${r.status}`);
  }

  async #admin(method: string, path: string, body?: unknown): Promise<unknown> {
    const r = await fetch(`${this.api}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.adminToken}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
    return r.json();
  }

  async setPolicy(cell: string, rule: string): Promise<void> {
    await this.#admin("PUT", `/v1/policy/${cell}`, { rule, reason: "test" });
  }

  async approve(actionId: string): Promise<void> {
    const pending = (await this.#admin("GET", "/v1/approvals")) as { action_id: string; fingerprint: string }[];
    const mine = pending.find((a) => a.action_id === actionId);
    if (!mine) throw new Error(`${actionId} is not awaiting approval`);
    await this.#admin("POST", `/v1/approvals/${actionId}/approve`, { fingerprint: mine.fingerprint, reason: "looks right" });
  }

  async stop(): Promise<void> {
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGTERM");
    await Promise.all(this.procs.map((p) => (p.exitCode === null && p.signalCode === null ? new Promise((r) => p.once("exit", r)) : undefined)));
    const admin = new pg.Client({ connectionString: this.server });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS "${this.dbName}" WITH (FORCE)`);
    await admin.end();
  }
}
