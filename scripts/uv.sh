#!/usr/bin/env bash
# Runs uv, installing it first into .tools/ (a private virtual environment) if the machine
# has none. Needs only Python 3.11+ with venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if command -v uv >/dev/null 2>&1; then
  exec uv "$@"
fi
if [ ! -x "$root/.tools/bin/uv" ]; then
  echo "uv not found: installing it into $root/.tools" >&2
  python3 -m venv "$root/.tools"
  "$root/.tools/bin/python" -m pip install --quiet --disable-pip-version-check uv
fi
exec "$root/.tools/bin/uv" "$@"
