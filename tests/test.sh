#!/usr/bin/env bash
# Install what the tests need into .venv (and Debian's chromium for the browser tests; redis-server,
# postgresql and nginx, which the tests start on free loopback ports as they need them; g++ for the native
# linear kernel), check the code with ruff and mypy, then run pytest (tests/test_layering.py runs
# import-linter's contracts).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet -r requirements-dev.txt
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
PATH="$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
