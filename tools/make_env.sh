#!/usr/bin/env bash
# Create/refresh .venv (Python 3.10) with the pinned dependencies, then `pip install -e .`.
# Idempotent: a stamp file records the hash of the inputs; nothing changed -> returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.sslseg-env-stamp"
HASH=$(cat requirements.txt constraints.txt setup.py pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && "$VENV/bin/python" -c "import d2ext, monai_bundles, sslseg" 2>/dev/null; then
  echo "[env] $VENV is up to date"; exit 0
fi

works() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; }
PY=""
for cand in ${PYTHON310:-} python3.10 $(command -v pyenv >/dev/null 2>&1 && ls -d "$(pyenv root)"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V -r); do
  if works "$cand"; then PY="$cand"; break; fi
done
if [ -z "$PY" ]; then
  echo "[env] ERROR: no working Python 3.10 found (tried \$PYTHON310, python3.10 on PATH," \
       "\$(pyenv root)/versions/3.10.*). Detectron2's only installable wheel (sal-detectron2)" \
       "is for CPython 3.10: install it (e.g. 'pyenv install 3.10') or set PYTHON310=/path/to/python3.10." >&2
  exit 1
fi
echo "[env] using $PY ($("$PY" --version 2>&1))"

REQ=requirements.txt
VENV_ARGS=()
if "$PY" -c "import detectron2" >/dev/null 2>&1; then
  # A user's own (source-built) detectron2 is kept: the venv sees it and we skip sal-detectron2.
  echo "[env] 'import detectron2' already works for $PY: keeping that detectron2"
  VENV_ARGS+=(--system-site-packages)
  REQ=$(mktemp); grep -v '^sal-detectron2' requirements.txt > "$REQ"
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "${VENV_ARGS[@]}" "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip<25" wheel
"$VENV/bin/python" -m pip install -q -r "$REQ" -c constraints.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, detectron2, monai, d2ext, monai_bundles, sslseg; print('[env] ok: torch', torch.__version__, '| detectron2', detectron2.__version__, '| monai', monai.__version__)"
echo "$HASH" > "$STAMP"
