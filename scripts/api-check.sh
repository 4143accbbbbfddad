#!/usr/bin/env bash
# The HTTP API against its own OpenAPI document: schemathesis (pinned, in a project-local
# venv) with every check on, every phase (examples, coverage, fuzzing, stateful through
# the document's links) and a bounded number of examples per operation. Needs DATABASE_URL
# (a PostgreSQL server; a database of its own is created there) and the built `idem`.
# Run by scripts/test.sh; by hand: DATABASE_URL=… scripts/api-check.sh [schemathesis args].
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?DATABASE_URL is not set: start PostgreSQL or run scripts/test.sh, which starts one}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/idem-target}"
idem="$CARGO_TARGET_DIR/debug/idem"
[ -x "$idem" ] || { echo "$idem is not built: cargo build --bin idem" >&2; exit 1; }
SCHEMATHESIS=4.32.5
venv=.venv-api
if [ ! -x "$venv/bin/st" ] || [ "$("$venv/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS"
fi

command -v psql >/dev/null || { echo "psql not found: apt-get install postgresql-client" >&2; exit 1; }
db="idem_api_check_$$"
server="${DATABASE_URL%/*}"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
url="$server/$db"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
serve_pid=""
cleanup() {
  [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$idem" migrate --database-url "$url" >/dev/null
token=$("$idem" tokens create --database-url "$url" --name schemathesis \
  --scope submit --scope read --scope approve | tail -n 1)
# A rate limit high enough that the run measures the API, not the limiter.
RUST_LOG=warn "$idem" serve --database-url "$url" --listen "127.0.0.1:$port" \
  --rate-limit 100000 --rate-burst 100000 &
serve_pid=$!
for _ in $(seq 1 100); do
  python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/v1/health', timeout=1)" 2>/dev/null && break
  kill -0 "$serve_pid" 2>/dev/null || { echo "idem serve exited" >&2; exit 1; }
  sleep 0.1
done
# No NUL in generated text: PostgreSQL cannot store U+0000, and the server answers any with
# a 422 naming the field (tests/api.rs checks that), which no schema can say for every key.
PYTHONPATH=scripts/api-check SCHEMATHESIS_HOOKS=hooks "$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
  --checks all --max-examples "${API_CHECK_EXAMPLES:-30}" --seed 1 \
  --generation-allow-x00 false \
  --header "Authorization: Bearer $token" --request-timeout 10 --no-color "$@"
