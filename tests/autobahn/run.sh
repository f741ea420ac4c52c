#!/usr/bin/env bash
# Autobahn|Testsuite against the echo harness built on the production codec and worker code.
# 1. conformance: groups 1-7, 9, 10 (deflate groups 12/13 excluded: we never negotiate it) with a
#    16 MiB message cap; every case must be OK, NON-STRICT or INFORMATIONAL (kosoku exits 0), and
#    the results must equal tests/autobahn/expected-results.json.
# 2. limit run: group 9 at the production cap (1 MiB); every case past the cap must close 1009
#    and the server must still accept a connection afterwards.
# Set DRIVER=legacy to run the harness on epoll.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/autobahn-venv
OUT=target/autobahn
PORT=${AUTOBAHN_PORT:-9001}
if [ ! -x "$VENV/bin/kosoku" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check kosoku==0.1.0
fi
cargo build --release --example autobahn_echo
ECHO=target/release/examples/autobahn_echo
rm -rf "$OUT"
mkdir -p "$OUT"

start_echo() {
    "$ECHO" --listen "127.0.0.1:$PORT" --message-bytes-max "$1" --driver "${DRIVER:-auto}" &
    ECHO_PID=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "echo harness did not start" >&2
    return 1
}
stop_echo() { kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true; }
trap stop_echo EXIT

start_echo 16777216
set +e
"$VENV/bin/kosoku" -m fuzzingclient "ws://127.0.0.1:$PORT/" -x '11.*' -x '12.*' -x '13.*' -p 2 -o "$OUT/server" >"$OUT/kosoku.log" 2>&1
KOSOKU_RC=$?
set -e
tail -n 5 "$OUT/kosoku.log"
stop_echo
python3 tests/autobahn/check.py conformance "$OUT/server/index.json" tests/autobahn/expected-results.json
if [ "$KOSOKU_RC" -ne 0 ]; then
    echo "kosoku reported failing cases (exit $KOSOKU_RC)" >&2
    exit 1
fi

start_echo 1048576
set +e
"$VENV/bin/kosoku" -m fuzzingclient "ws://127.0.0.1:$PORT/" -i '9.*' -p 2 -o "$OUT/limit" >"$OUT/kosoku-limit.log" 2>&1
set -e
python3 tests/autobahn/check.py limit "$OUT/limit" 1048576
# The server must still accept connections after the limit run.
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") || { echo "echo harness died during the limit run" >&2; exit 1; }
stop_echo
trap - EXIT
