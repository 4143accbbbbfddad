#!/usr/bin/env bash
# Runs idem's whole test suite: unit, model, end-to-end, Kafka, API, MCP and browser tests
# against a real PostgreSQL, a real Kafka-protocol broker and a headless Chromium. Uses DATABASE_URL and KAFKA_BOOTSTRAP if set;
# otherwise the local PostgreSQL on 127.0.0.1:5432 (started if down) and a tansu broker
# started here (installed first if missing); Chromium and chromedriver from Debian's packages
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/idem-target}"

if [ -z "${DATABASE_URL:-}" ]; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; trying to start it" >&2
    if command -v pg_ctlcluster >/dev/null; then
      ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1)
      pg_ctlcluster --skip-systemctl-redirect "${ver:-15}" main start || pg_ctlcluster "${ver:-15}" main start || true
    fi
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
fi

# Kafka-protocol broker: KAFKA_BOOTSTRAP if set; else tansu with sqlite storage, installed
# from crates.io when missing (about 17 minutes on a cold machine) and stopped on exit.
if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v tansu >/dev/null; then
    echo "tansu not found; installing it (cargo install tansu --locked --features dynostore,libsql)" >&2
    cargo install tansu --locked --features dynostore,libsql
  fi
  tansu_dir=$(mktemp -d /tmp/idem-tansu.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # tansu resolves a sqlite URL's path against its working directory.
  (cd "$tansu_dir" && exec tansu broker --storage-engine "sqlite://tansu.db" \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    >"$tansu_dir/tansu.log" 2>&1) &
  tansu_pid=$!
  trap 'kill $tansu_pid 2>/dev/null || true; rm -rf "$tansu_dir"' EXIT
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
  done
  export KAFKA_BOOTSTRAP="127.0.0.1:$port"
  echo "tansu broker on $KAFKA_BOOTSTRAP (log: $tansu_dir/tansu.log)" >&2
fi

# The approver console's browser test drives Debian's Chromium through chromedriver.
if [ -z "${CHROMIUM:-}" ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  echo "chromium/chromedriver not found; installing Debian's chromium and chromium-driver" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi
