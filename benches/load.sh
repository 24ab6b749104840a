#!/usr/bin/env bash
# Load bench of the HTTP service on loopback, with wrk (Debian package
# `wrk`): the real `agregat serve` on the committed sample, 50 connections,
# 30 s per workload:
#
#   saved    the education office's saved query usia_sekolah (cell-key)
#   cellkey  an ad-hoc cell-key query (kelurahan x sex), repeated
#   bappeda  Bappeda's mixed DP workload (6 queries, round robin; repeats
#            of a DP question are served from the release cache at no
#            charge, so the budget holds for the whole run)
#
# Prints throughput, p50/p90/p99 latency, non-2xx responses and socket
# errors per workload, and the server's peak RSS (VmHWM). The rate limits
# of the sample agreements are lifted in a temporary copy of the policy
# directory: this measures the service, not the limiter.
#
# Usage: benches/load.sh   (AGREGAT_LOAD_SECONDS, AGREGAT_LOAD_CONNECTIONS,
#                           AGREGAT_LOAD_THREADS, AGREGAT_LOAD_PORT)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${AGREGAT_LOAD_SECONDS:-30}
conns=${AGREGAT_LOAD_CONNECTIONS:-50}
threads=${AGREGAT_LOAD_THREADS:-2}
port=${AGREGAT_LOAD_PORT:-18080}
command -v wrk >/dev/null || { echo "benches/load.sh needs wrk: apt-get install wrk" >&2; exit 1; }

# The test build's binary (dev profile, dependencies optimised): no second build.
cargo build --quiet --bin agregat
bin="${CARGO_TARGET_DIR:-target}/debug/agregat"

work=$(mktemp -d)
cp -r data-samples/agreements "$work/policy"
sed -i 's/^requests_per_minute = .*/requests_per_minute = 100000000/' "$work/policy"/*.toml
"$bin" serve --listen "127.0.0.1:$port" --state "$work/state" --policy "$work/policy" \
  >"$work/server.out" 2>"$work/server.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/server.err"; exit 1; }

token() { sed -n "s/^\"$1\" = \"\(.*\)\"/\1/p" data-samples/DEMO-TOKENS-NOT-FOR-PRODUCTION.toml; }
disdikbud=$(token disdikbud-pontianak)
bappeda=$(token bappeda-pontianak)

run() { # name path bodies token
  local name=$1 path=$2 bodies=$3 tok=$4
  # warm up: every body once (grids, release cache)
  while IFS= read -r body; do
    [ -n "$body" ] || continue
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port$path" \
      -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' -d "$body")
    [ "$code" = 200 ] || { echo "warm-up of $name failed: HTTP $code for $body" >&2; exit 1; }
  done <"$bodies"
  printf '%-8s ' "$name"
  AGREGAT_TOKEN=$tok AGREGAT_PATH=$path AGREGAT_BODIES=$bodies \
    wrk -t"$threads" -c"$conns" -d"${seconds}s" --latency -s benches/load/post.lua \
    "http://127.0.0.1:$port" | grep '^RESULT' | sed 's/^RESULT //'
}

echo "agregat load bench: $conns connections, ${seconds} s per workload, $(nproc) cores"
run saved /v1/queries/usia_sekolah benches/load/saved.jsonl "$disdikbud"
run cellkey /v1/query benches/load/cellkey.jsonl "$disdikbud"
run bappeda /v1/query benches/load/bappeda.jsonl "$bappeda"
echo "server peak RSS: $(grep VmHWM /proc/$pid/status | awk '{print $2, $3}')"
echo "audit entries: $(curl -s "http://127.0.0.1:$port/metrics" | sed -n 's/^agregat_audit_entries_total //p')"
