#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that,
# unlike requests/s or CPU time, does not move with what else the machine
# is doing, so a change to the request path can be judged by one run.
#
#   benches/instructions.sh [SECONDS]      (default 10)
#
# CONNS=N sets wrk's connections (default 8); CONNS=1 takes the load's
# batching out of the count (more connections, more requests served per
# wakeup of the event loop, fewer instructions per request), for a
# before/after of two builds (TOKENGATE_BIN) on a busy machine.
#
# KEEP=DIR keeps each case's callgrind profile as DIR/LABEL.cg, to read
# with `callgrind_annotate --inclusive=yes DIR/cached.cg`. CASES="cached
# forward" runs only the cases named (default: cached none limited forward
# nginx).
#
# Needs valgrind, wrk and nginx (Debian: valgrind wrk nginx-light) and a
# release build (`cargo build --release`, or TOKENGATE_BIN=path). Counts
# user-space instructions only: the kernel's share (socket reads and
# writes) is the same for every proxy making the same syscalls.
#
# Topology: nginx serves a static 200 on core 0 as the upstream; the proxy
# under test runs under callgrind on core 1; wrk (8 connections, core 0)
# drives it over loopback. Cases: tokengate with a valid token (`cached`),
# tokengate on an `auth = "none"` route (`none`), the same token on a
# route with a rate limit it never reaches (`limited`; `limited-redis`
# counting through a redis-server started on a free port, when CASES names
# it), tokengate's forward-auth
# answer for a valid token (`forward`, nothing forwarded), and nginx itself
# as a plain keep-alive `proxy_pass` (`nginx`) and answering `return 204`
# itself (`nginx-204`, when CASES names it); `close` and `nginx-close` are
# the cached and nginx cases with a connection per request. Everything listens on
# 127.0.0.1.
set -euo pipefail

SECONDS_PER_CASE=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TOKENGATE_BIN:-$ROOT/target/release/tokengate}
for tool in valgrind wrk nginx taskset curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release" >&2; exit 1; }

DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$DIR/up/nginx.pid" ] && kill "$(cat "$DIR/up/nginx.pid")" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port) PUB=$(free_port) ADM=$(free_port) NGX=$(free_port)

mkdir -p "$DIR/up" "$DIR/px"
cat > "$DIR/up/nginx.conf" <<EOF
worker_processes 1; pid $DIR/up/nginx.pid; error_log $DIR/up/err warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $DIR/up; proxy_temp_path $DIR/up;
  server { listen 127.0.0.1:$UP; keepalive_requests 1000000;
    location / { return 200 '{"ok":true}\n'; } } }
EOF
taskset -c 0 nginx -c "$DIR/up/nginx.conf"

cat > "$DIR/tg.toml" <<EOF
[server]
listen = "127.0.0.1:$PUB"
admin_listen = "127.0.0.1:$ADM"
[store]
url = "sqlite://$DIR/tg.db"
# Comparable with earlier counts: no access log (ACCESS_LOG=json turns it
# on, to a file, to count what it adds; ACCESS_LOG=none writes no [log]
# table, for a build from before the access log, which refuses one).
$(case "${ACCESS_LOG:-}" in
    json) printf '[log]\nformat = "json"\naccess_file = "%s"\n' "$DIR/access.log" ;;
    none) ;;
    *) printf '[log]\naccess = false\n' ;;
  esac)
[[upstreams]]
name = "up"
url = "http://127.0.0.1:$UP"
[[routes]]
path = "/"
upstream = "up"
[[routes]]
path = "/open"
upstream = "up"
auth = "none"
[[routes]]
path = "/limited"
upstream = "up"
rate_limits = ["bench"]
[[rate_limits.policies]]
name = "bench"
requests = 1000000000
window_seconds = 60
by = "token"
EOF
"$BIN" --config "$DIR/tg.toml" init >/dev/null 2>&1
"$BIN" --config "$DIR/tg.toml" tenant create --name Bench >/dev/null
"$BIN" --config "$DIR/tg.toml" account create --tenant 1 --email b@example.com --name B >/dev/null
TOKEN=$("$BIN" --config "$DIR/tg.toml" token issue --account 1 --name bench --ability '*' 2>/dev/null)

# count LABEL URL -- COMMAND...: runs COMMAND under callgrind on core 1,
# drives URL with wrk, prints instructions per request.
count() {
    local label=$1 url=$2 health=$3; shift 4
    RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind \
        --callgrind-out-file="$DIR/$label.cg" "$@" >/dev/null 2>"$DIR/$label.log" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 200); do curl -s -o /dev/null "$health" && break; sleep 0.1; done
    taskset -c 0 wrk -t1 -c${CONNS:-8} -d"${SECONDS_PER_CASE}s" -H "Authorization: Bearer $TOKEN" \
        ${WRK_HEADER:+-H "$WRK_HEADER"} "$url" > "$DIR/$label.wrk"
    # A clean exit writes the profile; give it time under valgrind.
    kill -TERM "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    wait "$pid" 2>/dev/null || true
    local req ir
    req=$(grep -oP '^\s+\K\d+(?= requests in)' "$DIR/$label.wrk")
    ir=$(grep -oP 'summary: \K\d+' "$DIR/$label.cg")
    if grep -q "Non-2xx" "$DIR/$label.wrk"; then echo "$label: non-2xx answers" >&2; exit 1; fi
    printf '%-8s %9d requests %12d instructions %8d per request\n' \
        "$label" "$req" "$ir" $((ir / req))
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$DIR/$label.cg" "$KEEP/$label.cg"; fi
}
CASES=${CASES:-cached none limited forward nginx}
wanted() { case " $CASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

wanted cached && count cached "http://127.0.0.1:$PUB/x" "http://127.0.0.1:$ADM/healthz" -- \
    "$BIN" --config "$DIR/tg.toml" serve
wanted none && count none "http://127.0.0.1:$PUB/open/x" "http://127.0.0.1:$ADM/healthz" -- \
    "$BIN" --config "$DIR/tg.toml" serve
wanted limited && count limited "http://127.0.0.1:$PUB/limited/x" \
    "http://127.0.0.1:$ADM/healthz" -- "$BIN" --config "$DIR/tg.toml" serve
if wanted limited-redis; then
    # The limited route again, counting through a redis-server of its own.
    RPORT=$(free_port)
    redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$DIR/redis.pid" >/dev/null
    sed "s|^\[\[rate_limits.policies\]\]|[rate_limits]\nstore = \"redis://127.0.0.1:$RPORT\"\n[[rate_limits.policies]]|" \
        "$DIR/tg.toml" > "$DIR/tg-redis.toml"
    count limited-redis "http://127.0.0.1:$PUB/limited/x" \
        "http://127.0.0.1:$ADM/healthz" -- "$BIN" --config "$DIR/tg-redis.toml" serve
    kill "$(cat "$DIR/redis.pid")"
fi
# A connection per request (`close`, `nginx-close`): the client asks for
# `Connection: close`, so each request pays an accept, a close and the
# connection's setup.
wanted close && WRK_HEADER="Connection: close" count close "http://127.0.0.1:$PUB/x" \
    "http://127.0.0.1:$ADM/healthz" -- "$BIN" --config "$DIR/tg.toml" serve
wanted forward && count forward "http://127.0.0.1:$PUB/_tokengate/auth/x" \
    "http://127.0.0.1:$ADM/healthz" -- "$BIN" --config "$DIR/tg.toml" serve
{ wanted nginx || wanted nginx-204 || wanted nginx-close; } || exit 0

cat > "$DIR/px/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off;
pid $DIR/px/nginx.pid; error_log $DIR/px/err warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $DIR/px; proxy_temp_path $DIR/px;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  server { listen 127.0.0.1:$NGX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
wanted nginx && count nginx "http://127.0.0.1:$NGX/x" "http://127.0.0.1:$NGX/x" -- \
    nginx -c "$DIR/px/nginx.conf"
wanted nginx-close && WRK_HEADER="Connection: close" count nginx-close \
    "http://127.0.0.1:$NGX/x" "http://127.0.0.1:$NGX/x" -- nginx -c "$DIR/px/nginx.conf"
if wanted nginx-204; then
    # nginx answering `return 204` itself: what the forward-auth answer
    # (`forward`) is held to.
    sed "s|location / {.*} } }|location / { return 204; } } }|" "$DIR/px/nginx.conf" \
        > "$DIR/px/nginx-204.conf"
    count nginx-204 "http://127.0.0.1:$NGX/x" "http://127.0.0.1:$NGX/x" -- \
        nginx -c "$DIR/px/nginx-204.conf"
fi
