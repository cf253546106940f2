#!/usr/bin/env bash
# The validators the tests check pinstorm's exports and CI examples with (scripts/test.sh
# runs this), from PyPI in a virtual environment inside the lab cache
# ($PINSTORM_CACHE, else $XDG_CACHE_HOME/pinstorm, else ~/.cache/pinstorm), in CACHE/validators:
# - kcidb-io: KCIDB's own I/O schema and validator (tests/nightly.rs validates `pinstorm
#   export kcidb` of real results with it), and rfc3339-validator so that its validator
#   checks the date-time fields too (jsonschema checks that format only when it is there);
# - check-jsonschema: bundles the GitHub Actions and GitLab CI schemas
#   (`--builtin-schema vendor.github-workflows`, `vendor.gitlab-ci`), used offline;
# - kubernetes-validate: bundles Kubernetes' resource schemas, used offline.
# Needs python3 with venv (Debian: python3-venv, which scripts/lab-setup.sh installs).
set -euo pipefail

kcidb_io_version="141"
check_jsonschema_version="0.39.0"
kubernetes_validate_version="1.37.0"
rfc3339_validator_version="0.1.4"
want="kcidb-io==$kcidb_io_version rfc3339-validator==$rfc3339_validator_version check-jsonschema==$check_jsonschema_version kubernetes-validate==$kubernetes_validate_version"

cache="${PINSTORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pinstorm}"
case "$cache" in
    /*) ;;
    *) echo "validators-setup: the lab cache must be an absolute path, got '$cache'" >&2; exit 2 ;;
esac
venv="$cache/validators"

if [ "$(cat "$venv/.pinstorm-versions" 2>/dev/null)" != "$want" ]; then
    echo "validators-setup: installing $want into $venv"
    mkdir -p "$cache"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q $want
    echo "$want" > "$venv/.pinstorm-versions"
fi
"$venv/bin/python" -c 'import kcidb_io; print("validators-setup: kcidb-io schema", kcidb_io.schema.LATEST)'
echo "validators-setup: $("$venv/bin/check-jsonschema" --version), kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"
