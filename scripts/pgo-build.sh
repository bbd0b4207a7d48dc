#!/usr/bin/env bash
# The release binary, optimised with the profile of a training run (PGO):
#
#   scripts/pgo-build.sh           -> target/pgo/use/release/tokengate
#
# 1. builds tokengate instrumented (`-Cprofile-generate`, target/pgo/gen);
# 2. runs it: a gateway in front of `tokengate echo`, on 127.0.0.1 only,
#    driven by curl through what production traffic does most: proxied
#    requests with a valid token over keep-alive and a connection each,
#    bodies, the forward-auth answer (Envoy's and nginx's forms), denials
#    (missing, garbage and insufficient tokens), a rate-limited
#    route, the access log on and off; and, when openssl is installed, the same
#    over TLS (HTTP/1.1 and h2, a handshake per request and resumed);
# 3. merges the profile (llvm-profdata from rustup's `llvm-tools`);
# 4. builds again with it (`-Cprofile-use`, target/pgo/use).
#
# Instructions per request (callgrind, benches/instructions.sh) drop by
# 7-20% for the forward-auth answer, about 8% for a proxied request with
# a cached token and 2% with a connection per request: BENCHMARKS.md,
# "Sixteenth session". `cargo build --release` and the Dockerfile build
# without it; this is for an operator's own release binary.
#
# Needs: rustup's llvm-tools (`rustup component add llvm-tools`), curl;
# openssl for the TLS part (skipped without it). Two release builds: about
# 25 minutes on two cores. Paths the training never takes (PostgreSQL,
# Redis) are built as if rarely used; they work the same.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
[ -x "$PROFDATA" ] || { echo "needs llvm-profdata: rustup component add llvm-tools" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "pgo: building instrumented (target/pgo/gen)" >&2
# Every run below names its profile file (LLVM_PROFILE_FILE), so the path
# built in is never written; it is fixed so that a second run of this
# script reuses the instrumented build.
RUSTFLAGS="-Cprofile-generate=$ROOT/target/pgo/unused" \
    cargo build --release --locked --bin tokengate --target-dir target/pgo/gen
GEN=target/pgo/gen/release/tokengate

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
        || shuf -i 20000-60000 -n 1
}
wait_up() {
    for _ in $(seq 100); do curl -fsk -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "pgo: $1 never came up" >&2
    exit 1
}
UP=$(free_port) PUB=$(free_port) ADM=$(free_port) TPUB=$(free_port) TADM=$(free_port)

# config NAME PUBLIC ADMIN [EXTRA]: a gateway's config file.
config() {
    cat > "$WORK/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
[store]
url = "sqlite://$WORK/store.db"
[log]
access_file = "$WORK/$1-access.log"
[[upstreams]]
name = "echo"
url = "http://127.0.0.1:$UP"
[[routes]]
path = "/"
upstream = "echo"
[[routes]]
path = "/open"
upstream = "echo"
auth = "none"
[[routes]]
path = "/admin-only"
upstream = "echo"
abilities = ["admin:write"]
[[routes]]
path = "/limited"
upstream = "echo"
rate_limits = ["train"]
[[rate_limits.policies]]
name = "train"
requests = 1000000
window_seconds = 60
by = "token"
${4:-}
EOF
}
config plain "$PUB" "$ADM"

# Only the gateways' profiles are kept: the upstream's (hyper as a
# server, as the h2 path) and the set-up commands' would weigh code the
# request path does not run that way.
# (A process started in the background is started directly, not through
# a shell function, so that `$!` is the process itself.)
ASIDE="$WORK/aside/%p.profraw" KEPT="$WORK/profile/%p.profraw"
aside() { LLVM_PROFILE_FILE=$ASIDE "$GEN" "$@"; }
LLVM_PROFILE_FILE=$ASIDE "$GEN" echo --listen "127.0.0.1:$UP" >/dev/null 2>&1 &
PIDS+=($!)
aside --config "$WORK/plain.toml" init >/dev/null 2>&1
aside --config "$WORK/plain.toml" tenant create --name Train >/dev/null
aside --config "$WORK/plain.toml" account create --tenant 1 --email t@example.com --name T >/dev/null
TOKEN=$(aside --config "$WORK/plain.toml" token issue --account 1 --name train --ability '*' 2>/dev/null)
NARROW=$(aside --config "$WORK/plain.toml" token issue --account 1 --name narrow --ability 'calls:read' 2>/dev/null)

# drive URL COUNT [CURL ARGS...]: COUNT requests from one curl process, up
# to 32 at a time (as under load: the event loop finds several sockets
# ready per wakeup), each connection reused unless the arguments say
# otherwise.
drive() {
    local base=$1 n=$2
    shift 2
    curl -sk --no-progress-meter -o /dev/null --parallel --parallel-max 32 "$@" "$base/[1-$n]" >/dev/null || true
}
# train BASE: the request mix, against one gateway.
train() {
    local b=$1 auth=(-H "Authorization: Bearer $TOKEN")
    drive "$b/api/calls" 20000 "${auth[@]}"
    drive "$b/api/calls" 3000 "${auth[@]}" -H "Connection: close"
    drive "$b/api/calls" 2000 -H "token: $TOKEN" -X POST --data-binary '{"n":1}' \
        -H 'Content-Type: application/json'
    drive "$b/_tokengate/auth/api/calls" 15000 "${auth[@]}"
    drive "$b/_tokengate/auth" 3000 "${auth[@]}" -H "X-Original-URI: /api/calls?x=1" \
        -H "X-Original-Method: GET"
    drive "$b/limited" 3000 "${auth[@]}"
    drive "$b/open" 2000
    drive "$b/api/calls" 1000
    drive "$b/api/calls" 1000 -H "Authorization: Bearer tg_garbage0000000000000000000000"
    drive "$b/admin-only" 1000 -H "Authorization: Bearer $NARROW"
    drive "$b/_tokengate/auth/api/calls" 1000
}

# while_serving NAME ADMIN_PORT COMMAND...: runs COMMAND while gateway NAME
# serves, then stops it (SIGTERM: it exits and writes its profile).
while_serving() {
    local name=$1 admin=$2 gate
    shift 2
    LLVM_PROFILE_FILE=$KEPT "$GEN" --config "$WORK/$name.toml" serve >/dev/null 2>&1 &
    gate=$!
    PIDS+=("$gate")
    wait_up "http://127.0.0.1:$admin/readyz"
    "$@"
    kill -TERM "$gate"
    wait "$gate" || true
}
# train_tls BASE: the TLS mix.
train_tls() {
    local t=$1 auth=(-H "Authorization: Bearer $TOKEN")
    drive "$t/api/calls" 10000 "${auth[@]}" --http1.1
    drive "$t/api/calls" 10000 "${auth[@]}" --http2
    drive "$t/_tokengate/auth/api/calls" 5000 "${auth[@]}" --http1.1
    # A handshake per request: curl resumes the session where it can.
    drive "$t/api/calls" 1000 "${auth[@]}" -H "Connection: close" --http1.1
    for _ in $(seq 200); do
        curl -sk -o /dev/null --no-sessionid "${auth[@]}" "$t/api/calls" || true
    done
}

# Over plain HTTP, with the access log on (the default) and off.
echo "pgo: training over plain HTTP, access log on" >&2
while_serving plain "$ADM" train "http://127.0.0.1:$PUB"
echo "pgo: training over plain HTTP, access log off" >&2
sed -i 's|^access_file = .*|access = false|' "$WORK/plain.toml"
while_serving plain "$ADM" train "http://127.0.0.1:$PUB"

if command -v openssl >/dev/null; then
    echo "pgo: training over TLS" >&2
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    config tls "$TPUB" "$TADM" "[tls]
cert_file = \"$WORK/cert.pem\"
key_file = \"$WORK/key.pem\""
    while_serving tls "$TADM" train_tls "https://127.0.0.1:$TPUB"
else
    echo "pgo: no openssl: the TLS part of the training is skipped" >&2
fi

"$PROFDATA" merge -o "$WORK/merged.profdata" "$WORK/profile"
# The profile's path is new each run: cargo does not watch the file's
# contents, so a fixed path would keep a build made with an older profile.
echo "pgo: building with the profile (target/pgo/use)" >&2
RUSTFLAGS="-Cprofile-use=$WORK/merged.profdata" \
    cargo build --release --locked --bin tokengate --target-dir target/pgo/use
echo "$ROOT/target/pgo/use/release/tokengate"
