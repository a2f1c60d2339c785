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
# llama.cpp's server for tests/test_upstream_llama_cpp.py (Loupe in front of a real engine), after the Debian
# packages because it needs g++. PyPI has only its source: the first install builds llama.cpp (15 to 40 minutes on 2 cores; given up after 40), later ones take
# pip's cached wheel. Not in requirements-dev.txt so that a machine where it cannot be built still runs
# everything else; there the test is skipped and says why.
if ! .venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
  # GGML_NATIVE=OFF: a wheel pip caches must run on whatever CPU the next machine has (a test needs no speed).
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" timeout 2400 .venv/bin/pip install --quiet 'llama-cpp-python[server]>=0.3.36,<0.4' \
    || echo "tests/test.sh: llama-cpp-python could not be built here; tests/test_upstream_llama_cpp.py will be skipped" >&2
fi
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
