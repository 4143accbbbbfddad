"""A real idem for the client tests: a fresh database on the PostgreSQL in DATABASE_URL
(scripts/test.sh starts one when none is given), the Stripe simulator, a worker that can be
killed with SIGKILL, and ``idem serve`` with scoped tokens — every one the real binary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[3]


def _idem_bin() -> str:
    given = os.environ.get("IDEM_BIN")
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/idem-target"))
    path = Path(given) if given else Path(target) / "debug" / "idem"
    if not path.is_file():
        pytest.fail(
            f"no idem binary at {path}: build it (cargo build --bin idem) or set IDEM_BIN; "
            "./scripts/test.sh does both",
            pytrace=False,
        )
    return str(path)


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.fail(
            "DATABASE_URL is not set: start PostgreSQL (./scripts/test.sh starts one of its own "
            "and runs these tests) or point DATABASE_URL at one",
            pytrace=False,
        )
    return url


_given: set[int] = set()


def _free_port() -> int:
    """A free port not handed out before (the OS may offer a just-closed one again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            # Only a 2xx: another server on the port (a collision) answers something else.
            if httpx.get(url, timeout=1).is_success:
                return
            time.sleep(0.1)
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url} within 30 s")


@dataclass
class Stack:
    """The running idem and how to reach, fault and count it."""

    bin: str
    database_url: str
    api: str
    stripe: str
    agent_token: str
    admin_token: str
    logs: Path
    worker_args: list[str]
    worker: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers_started: int = 0

    def spawn(
        self, name: str, args: list[str], binary: str | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        env = {**os.environ, "DATABASE_URL": self.database_url, "RUST_LOG": "info"}
        p = subprocess.Popen(
            [binary or self.bin, *args],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append(p)
        return p

    def start_worker(self) -> None:
        self.workers_started += 1
        self.worker = self.spawn(
            f"worker-{self.workers_started}",
            ["worker", "--id", f"py-worker-{self.workers_started}", *self.worker_args],
        )

    def kill_worker(self) -> None:
        """SIGKILL: no shutdown, leases left behind, the partner call cut mid-flight."""
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()
        self.worker = None

    def effects(self, action_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """The Stripe simulator's ledger entries caused by one action: real effects."""
        ledger = httpx.get(f"{self.stripe}/_sim/ledger", timeout=5).json()["effects"]
        return [e for e in ledger if e.get("idem_action_id") == str(action_id)]

    def requests_seen(self) -> int:
        return len(httpx.get(f"{self.stripe}/_sim/requests", timeout=5).json()["requests"])

    def script(self, faults: list[Any]) -> None:
        """The next requests' faults, in order (e.g. ``[{"delay": 3000}]``)."""
        httpx.post(f"{self.stripe}/_sim/script", json=faults, timeout=5).raise_for_status()

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"authorization": f"Bearer {self.admin_token}"}, timeout=10
        )

    def set_policy(self, cell: str, rule: str) -> None:
        with self.admin() as h:
            h.put(f"/v1/policy/{cell}", json={"rule": rule, "reason": "test"}).raise_for_status()

    def approve(self, action_id: uuid.UUID | str) -> None:
        with self.admin() as h:
            pending = h.get("/v1/approvals").json()
            mine = [a for a in pending if a["action_id"] == str(action_id)]
            assert mine, f"{action_id} is not awaiting approval: {pending}"
            h.post(
                f"/v1/approvals/{action_id}/approve",
                json={"fingerprint": mine[0]["fingerprint"], "reason": "looks right"},
            ).raise_for_status()


def _token(bin_: str, url: str, name: str, scopes: list[str]) -> str:
    args = [bin_, "tokens", "create", "--database-url", url, "--name", name]
    for s in scopes:
        args += ["--scope", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    bin_ = _idem_bin()
    server = _database_url()
    name = f"idem_py_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # a generated name, not input
    parts = urlsplit(server)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    logs = tmp_path_factory.mktemp("idem-logs")
    subprocess.run([bin_, "migrate", "--database-url", url], check=True, capture_output=True)
    stripe = f"http://127.0.0.1:{_free_port()}"
    api = f"http://127.0.0.1:{_free_port()}"
    cells = ["--stripe-base", stripe]
    s = Stack(
        bin=bin_,
        database_url=url,
        api=api,
        stripe=stripe,
        agent_token=_token(bin_, url, "py-agent", ["submit", "read"]),
        admin_token=_token(bin_, url, "py-admin", ["read", "approve"]),
        logs=logs,
        # Short call timeout and settle time: a killed worker's lease ends, and its doubt
        # is reconciled, in seconds rather than Stripe's documented minutes.
        worker_args=[
            *cells,
            "--call-timeout-ms",
            "2000",
            "--settle-ms",
            "1000",
            "--poll-interval-ms",
            "50",
            "--sweep-interval-ms",
            "200",
        ],
    )
    try:
        # The simulator is the lab's (`idem-lab sim`); the operator binary has none.
        lab = str(Path(bin_).with_name("idem-lab"))
        sim = s.spawn(
            "stripe-sim", ["sim", "stripe", "--listen", stripe.removeprefix("http://")], lab
        )
        _wait_http(f"{stripe}/_sim/ledger", sim, "stripe simulator", logs / "stripe-sim.log")
        s.start_worker()
        srv = s.spawn("serve", ["serve", *cells, "--listen", api.removeprefix("http://")])
        _wait_http(f"{api}/v1/health", srv, "idem serve", logs / "serve.log")
        yield s
    finally:
        for p in s.procs:
            if p.poll() is None:
                p.terminate()
        for p in s.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def scope() -> str:
    """A scope of its own per test, so intents never collide across tests."""
    return f"test-{uuid.uuid4()}"
