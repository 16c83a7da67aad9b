#!/usr/bin/env bash
# Create or refresh .venv and install eoforge with its test tools. Idempotent.
# System packages (PostgreSQL + PostGIS for the STAC API the tests start, kubectl for
# manifests) are installed with apt when missing and we are root.
set -euo pipefail
VENV=${VENV:-.venv}
# Python 3.12: from PATH, else pyenv's (these machines install it under ~/.pyenv), else fail clearly.
PYTHON=${PYTHON:-python3.12}
if ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
  PYTHON=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -1)
fi
if [ -z "$PYTHON" ]; then
  echo "bootstrap: Python 3.12 not found (set PYTHON=/path/to/python3.12)" >&2
  exit 1
fi

need_apt=()
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 || need_apt+=(postgresql-15-postgis-3)
command -v kubectl >/dev/null || need_apt+=(kubectl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: missing system packages: ${need_apt[*]} (run as root or install them)" >&2
  fi
fi

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "bootstrap: $VENV is not Python 3.12; recreating it"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
EXTRAS=${EXTRAS:-test}   # make bench adds "bench" (TorchGeo, for bench/stream.py)
echo "bootstrap: pip install -e .[$EXTRAS] (first run downloads torch and ray: several minutes)"
"$VENV/bin/pip" install -q --progress-bar off -e ".[$EXTRAS]"
# moto (a local S3 API for the object-storage tests) cannot be co-resolved with the rest (botocore
# wants python-dateutil < 3, kubernetes >= 3), so it is installed on its own, last: pip keeps the
# installed versions where it can and takes python-dateutil 2.9, which kubernetes runs with.
"$VENV/bin/pip" install -q --progress-bar off "moto[server]==5.2.5" 2>&1 | grep -v "dependency resolver\|requires\|^WARNING" || true
# the tile reader's numba kernels, compiled once into their on-disk cache (not by every reading process)
"$VENV/bin/python" -c "from eoforge.data import kernels; kernels.warm()"
touch "$VENV/.eoforge-installed"
