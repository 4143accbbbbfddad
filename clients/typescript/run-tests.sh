#!/usr/bin/env bash
# The TypeScript client's build (tsc --strict) and tests (node --test) in project-local
# node_modules (downloads cached in ~/.cache/npm), against a real idem (DATABASE_URL, IDEM_BIN).
set -euo pipefail
cd "$(dirname "$0")"
export npm_config_cache="${npm_config_cache:-$HOME/.cache/npm}"
if [ ! -f node_modules/.installed ] || [ package-lock.json -nt node_modules/.installed ]; then
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules/.installed
fi
npm test --silent
