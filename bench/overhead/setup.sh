#!/usr/bin/env bash
# Create bench/.venv-litellm: a separate virtualenv for the LiteLLM proxy (the comparison
# point in bench/overhead) and py-spy (the profiler), so neither touches the project's pins.
#
#   bash bench/overhead/setup.sh            # idempotent; re-run after changing the pins below
#
# LiteLLM is pinned on purpose: litellm 1.82.7/1.82.8 and 1.107.0 were compromised
# releases (since pulled from PyPI). 1.103.0 predates the later incident and its dependencies
# resolve from the registry this project uses (1.103.11 and later ask for a certifi newer
# than it has). Override with LITELLM_SPEC='litellm[proxy]==X.Y.Z' only
# after checking that release.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LITELLM_VENV:-$here/../.venv-litellm}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for c in python3.11 python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1; then python="$c"; break; fi
  done
fi
spec="${LITELLM_SPEC:-litellm[proxy]==1.103.0}"
pyspy="${PYSPY_SPEC:-py-spy==0.4.3}"
stamp="$venv/.installed-$(printf '%s %s' "$spec" "$pyspy" | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  echo "bench/.venv-litellm is up to date ($spec, $pyspy)"
  exit 0
fi
echo "creating $venv with $python: $spec, $pyspy (a few minutes the first time)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$spec" "$pyspy"
rm -f "$venv"/.installed-* && touch "$stamp"
"$venv/bin/litellm" --version 2>/dev/null || true
echo "ok: $venv"
