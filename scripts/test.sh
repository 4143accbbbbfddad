#!/usr/bin/env bash
# Runs idem's whole test suite: unit, model and end-to-end tests against a real PostgreSQL.
# Uses DATABASE_URL if set; otherwise the local server on 127.0.0.1:5432, started if down.
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

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@"
fi
