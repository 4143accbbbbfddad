#!/usr/bin/env bash
# The Python client's checks and tests, in a project-local venv (downloads cached in
# ~/.cache/pip): ruff, mypy --strict, pytest against a real idem (DATABASE_URL, IDEM_BIN).
set -euo pipefail
cd "$(dirname "$0")"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ requirements-test.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt -e .
  touch "$stamp"
fi
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
.venv/bin/pytest -q "$@"
