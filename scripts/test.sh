#!/usr/bin/env bash
# Runs idem's whole test suite: unit, model, end-to-end, Kafka, API, MCP, browser tests,
# the CI-sized fault campaign, the Python and TypeScript clients' suites and schemathesis
# against the API's OpenAPI document, against a real
# PostgreSQL, real Apache Kafka and a headless Chromium. Uses DATABASE_URL and KAFKA_BOOTSTRAP if set; otherwise starts a PostgreSQL
# cluster of its own (Debian's postgresql package, installed if missing) and a one-node
# Apache Kafka (from Maven Central, resolved once into ~/.cache/idem) that every test binary
# shares, and stops both on exit. The fault campaign starts its own three-node cluster.
# Chromium and chromedriver come from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/idem-target}"
# The integration tests mostly wait (on partners, leases, settle times), so four test
# threads on two cores finish the suite binary in 131 s instead of 173 s (measured).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $sudo apt-get update -q; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}

# The approver console's browser test drives Debian's Chromium through chromedriver.
if [ -z "${CHROMIUM:-}" ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  echo "chromium/chromedriver not found; installing Debian's chromium and chromium-driver" >&2
  apt_install chromium chromium-driver
fi

# PostgreSQL and Apache Kafka of the suite's own, unless given.
services_env=$(mktemp /tmp/idem-services-env.XXXXXX)
rm -f "$services_env"
services_pid=""
cleanup() {
  [ -z "$services_pid" ] || kill "$services_pid" 2>/dev/null || true
  rm -f "$services_env"
}
trap cleanup EXIT
want=()
[ -n "${DATABASE_URL:-}" ] || want+=(--postgres)
[ -n "${KAFKA_BOOTSTRAP:-}" ] || want+=(--kafka-nodes 1)
if [ ${#want[@]} -gt 0 ]; then
  cargo build -q -p idem-services
  "$CARGO_TARGET_DIR/debug/idem-services" up "${want[@]}" --env-file "$services_env" --parent $$ &
  services_pid=$!
  while [ ! -s "$services_env" ]; do
    kill -0 "$services_pid" 2>/dev/null || { echo "idem-services failed to start the services" >&2; exit 1; }
    sleep 0.5
  done
  # shellcheck disable=SC1090
  . "$services_env"
fi
echo "Kafka: $KAFKA_BOOTSTRAP (${IDEM_KAFKA_BROKER:-given}); PostgreSQL: ${services_pid:+own, }from DATABASE_URL" >&2

failed=()
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" || failed+=(rust)
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --no-fail-fast "$@" || failed+=(rust)
fi

# The Python and TypeScript clients, with the real framework packages, against the real
# idem binary (simulators, a worker they kill, `idem serve`) on the same PostgreSQL.
cargo build -q --bin idem --bin idem-lab
export IDEM_BIN="$CARGO_TARGET_DIR/debug/idem"
# TypeScript first: its build (dist/examples/surface.js) is one of the surfaces the Python
# cross-surface test (tests/test_surfaces.py) drives.
./clients/typescript/run-tests.sh || failed+=(typescript)
./clients/python/run-tests.sh || failed+=(python)
# The HTTP API against its OpenAPI document (schemathesis, every check and phase).
./scripts/api-check.sh || failed+=(api)

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed suites: ${failed[*]}" >&2
  exit 1
fi
