#!/usr/bin/env bash
# Build the separate virtualenv the plain-dlt baseline of bench/sync_bench.py runs in.
#
# dlt's filesystem destination on S3 needs `dlt[s3]` (s3fs + aiobotocore), and
# aiobotocore pins botocore to a narrow range that conflicts with the boto3 the
# project uses, so it must not go into the project's environment.
#
# Usage: bash bench/setup_dlt_s3_venv.sh [VENV_DIR]     (default: bench/.venv-dlt-s3)
# Env:   PYTHON          interpreter to build the venv with (default: python3)
#        PROJECT_PYTHON  the project's interpreter; dlt, pyarrow and SQLAlchemy are pinned
#                        to the versions installed there so both contenders run the same
#                        library code (default: python on PATH; unpinned if it lacks them)
#        DLT_VERSION     override the pinned dlt version
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-dlt-s3}"
python="${PYTHON:-python3}"
project_python="${PROJECT_PYTHON:-python}"

version_of() {
    "$project_python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true
}

dlt_version="${DLT_VERSION:-$(version_of dlt)}"
pyarrow_version="$(version_of pyarrow)"
sqlalchemy_version="$(version_of sqlalchemy)"

pin() { if [ -n "$2" ]; then echo "$1==$2"; else echo "$1"; fi; }

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet \
    "$(pin 'dlt[s3,parquet,sql_database]' "$dlt_version")" \
    "$(pin pyarrow "$pyarrow_version")" \
    "$(pin sqlalchemy "$sqlalchemy_version")"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
print("dlt-s3 venv ready:", ", ".join(f"{p} {m.version(p)}" for p in ("dlt", "pyarrow", "sqlalchemy", "s3fs", "botocore")))
PY
