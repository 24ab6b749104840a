#!/usr/bin/env bash
# Memory bench of the HTTP service under heavy queries: a full-scale Kota
# Pontianak snapshot (690,000 synthetic people, generated once into the
# work directory), `agregat serve` with `memory_limit_mb` set, and
# N = 1, 2, 4, 8 concurrent heaviest-allowed queries over HTTP:
#
#   table  kelurahan x sex x single-year age with COUNT(DISTINCT no_kk)
#          under a cell-key agreement (the widest grid under max_cells)
#   dp     kelurahan x sex x single-year age with COUNT(DISTINCT no_kk)
#          under Bappeda's DP agreement
#
# Every query of a run differs (a different excluded age) so that
# none comes from a cache. For each N and each server build it reports the
# server's peak RSS (VmHWM) and its RSS after the queries (VmRSS, after
# 3 s idle), against the pool. A fresh server is started per N, so every
# peak is that N's own.
#
# Side by side: AGREGAT_BINS="system=target/debug/agregat mimalloc=/path/to/agregat-mimalloc"
# (name=binary pairs); by default only the build in the target directory.
# A binary with mimalloc as the global allocator: `cargo build --features
# mimalloc`, copied aside (see the README, "Hostile load: measured").
#
# Also measured, once per binary: audit DB growth per 10,000
# unauthenticated (wrong-token) requests, and how long a client that
# trickles its request body is kept (body_read_timeout_seconds = 30).
#
# Usage: benches/memory.sh   (AGREGAT_MEM_POOL_MB=1024, AGREGAT_MEM_LEVELS="1 2 4 8",
#                             AGREGAT_MEM_PEOPLE=690000, AGREGAT_MEM_WORK=dir to keep
#                             the snapshot between runs, AGREGAT_MEM_PORT=18090)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

pool=${AGREGAT_MEM_POOL_MB:-1024}
levels=${AGREGAT_MEM_LEVELS:-"1 2 4 8"}
people=${AGREGAT_MEM_PEOPLE:-690000}
port=${AGREGAT_MEM_PORT:-18090}
target="${CARGO_TARGET_DIR:-target}"
if [ -z "${AGREGAT_BINS:-}" ]; then
  cargo build --quiet --bin agregat
  AGREGAT_BINS="system=$target/debug/agregat"
fi
command -v curl >/dev/null || { echo "benches/memory.sh needs curl" >&2; exit 1; }
command -v python3 >/dev/null || { echo "benches/memory.sh needs python3" >&2; exit 1; }

work=${AGREGAT_MEM_WORK:-$(mktemp -d)}
mkdir -p "$work"
secret="$root/data-samples/SAMPLE-record-key-NOT-FOR-PRODUCTION.secret"
first_bin=${AGREGAT_BINS%% *}; first_bin=${first_bin#*=}
snap="$work/warehouse/pontianak-2026-s1"
if [ ! -f "$snap/manifest.json" ]; then
  echo "generating $people people into $snap"
  "$first_bin" generate --region 61.71 --people "$people" --as-of 2026-06-30 \
    --out "$snap" --secret-file "$secret" >/dev/null
fi

# Policy: the sample agreements with their rate limits lifted, plus a
# cell-key agreement allowed no_kk (households), RW and birth dates.
rm -rf "$work/policy"
cp -r data-samples/agreements "$work/policy"
sed -i 's/^requests_per_minute = .*/requests_per_minute = 100000000/' "$work/policy"/*.toml
sed -e 's/^id = "bappeda-pontianak"/id = "beban-tabel"/' \
    -e '/^\[protection\]/,$d' "$work/policy/bappeda-pontianak.toml" >"$work/policy/beban-tabel.toml"
printf '[protection]\nmethod = "cell_key"\nk = 10\n' >>"$work/policy/beban-tabel.toml"
table_tok=$("$first_bin" agreement token beban-tabel --dir "$work/policy" 2>/dev/null)
dp_tok=$(sed -n 's/^"bappeda-pontianak" = "\(.*\)"/\1/p' data-samples/DEMO-TOKENS-NOT-FOR-PRODUCTION.toml)

cat >"$work/agregat.toml" <<EOF
listen = "127.0.0.1:$port"
warehouse = "$work/warehouse"
policy = "$work/policy"
queries = "$root/queries"
state = "$work/state"
record_key_secret = "$secret"
verify_snapshots = "structure"
[limits]
memory_limit_mb = $pool
query_timeout_seconds = 300
max_body_bytes = 65536
unauthenticated_per_address_per_minute = 120
EOF

pid=
stop() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; pid=; }
trap 'stop; [ -n "${AGREGAT_MEM_WORK:-}" ] || rm -rf "$work"' EXIT

start() { # binary
  rm -rf "$work/state"
  "$1" serve --config "$work/agregat.toml" >"$work/server.out" 2>"$work/server.err" &
  pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$work/server.err" >&2
  exit 1
}
kib() { awk -v k="$1" '/^'"$1"':/ {print $2}' "/proc/$pid/status"; }
mib() { echo $(( $1 / 1024 )); }

table_sql() { # variant
  echo "SELECT kode_kel, jenis_kelamin, umur(tanggal_lahir) AS umur, COUNT(DISTINCT no_kk) AS kk FROM penduduk WHERE umur(tanggal_lahir) <> $((200 + $1)) GROUP BY 1, 2, 3"
}
dp_sql() {
  echo "SELECT kode_kel, jenis_kelamin, umur(tanggal_lahir) AS umur, COUNT(DISTINCT no_kk) AS kk FROM penduduk WHERE umur(tanggal_lahir) <> $((200 + $1)) GROUP BY 1, 2, 3"
}
post() { # token sql -> "status seconds"
  python3 -c 'import json,sys; print(json.dumps({"sql": sys.argv[1]}))' "$2" |
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "http://127.0.0.1:$port/v1/query" \
      -H "Authorization: Bearer $1" -H 'Content-Type: application/json' --data-binary @-
}

echo "agregat memory bench: $people people, pool ${pool} MiB, $(nproc) cores"
printf '%-9s %-6s %3s  %-28s %9s %9s %9s\n' build kind N statuses base_MiB peak_MiB after_MiB
variant=0
for pair in $AGREGAT_BINS; do
  name=${pair%%=*}; bin=${pair#*=}
  for kind in table dp; do
    for n in $levels; do
      start "$bin"
      base=$(kib VmRSS)
      statuses=$(
        for i in $(seq 1 "$n"); do
          variant=$((variant + 1))
          if [ "$kind" = table ]; then
            post "$table_tok" "$(table_sql $((variant + 1000 * n)))" &
          else
            post "$dp_tok" "$(dp_sql $((variant + 1000 * n)))" &
          fi
        done | awk '{print $1}' | sort | uniq -c | awk '{printf "%sx%s ", $1, $2}'
      )
      # (the queries ran in the substitution's subshell; a bare `wait` here
      # would wait for the server)
      sleep 3
      printf '%-9s %-6s %3s  %-28s %9s %9s %9s\n' "$name" "$kind" "$n" "$statuses" \
        "$(mib "$base")" "$(mib "$(kib VmHWM)")" "$(mib "$(kib VmRSS)")"
      stop
    done
  done

  # Unauthenticated flood: 10,000 wrong-token requests, database growth.
  start "$bin"
  db="$work/state/state.sqlite"
  before=$(du -cb "$db"* | tail -1 | cut -f1)
  python3 - "$port" <<'PY'
import http.client, sys, threading
port = int(sys.argv[1])
seen, lock = {}, threading.Lock()
def worker(n):
    # Every request is sent: a connection the server closes (its limit
    # before authentication) is opened again, and counted as "closed".
    c = None
    for _ in range(n):
        try:
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("POST", "/v1/query", body=b'{"sql":"SELECT 1"}',
                      headers={"Authorization": "Bearer agt_wrong", "Content-Type": "application/json"})
            r = c.getresponse(); r.read(); what = str(r.status)
        except (OSError, http.client.HTTPException):
            what = "closed"
            if c is not None:
                c.close()
            c = None
        with lock:
            seen[what] = seen.get(what, 0) + 1
ts = [threading.Thread(target=worker, args=(1250,)) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
print("answers:", ", ".join(f"{v} x {k}" for k, v in sorted(seen.items())))
PY
  stop  # the counts are written at shutdown
  after=$(du -cb "$db"* | tail -1 | cut -f1)
  echo "$name: 10,000 unauthenticated requests: state files $before -> $after bytes (+$((after - before)))"

  # A client that sends its head and trickles its body at 1 byte/s.
  sed -i 's/^max_body_bytes = .*/max_body_bytes = 65536\nbody_read_timeout_seconds = 30/' "$work/agregat.toml"
  start "$bin"
  kept=$(python3 - "$port" "$dp_tok" <<'PY'
import socket, sys, time
port, tok = int(sys.argv[1]), sys.argv[2]
body = b'{"sql": "SELECT COUNT(*) FROM penduduk"}'
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok.encode() +
          b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
t0 = time.time()
s.setblocking(False)
status = b""
for b in body:
    try:
        s.send(bytes([b]))
    except OSError:
        break
    end = time.time() + 1
    closed = False
    while time.time() < end:
        try:
            d = s.recv(4096)
            if not d:
                closed = True
                break
            status += d
        except BlockingIOError:
            time.sleep(0.05)
        except OSError:
            closed = True
            break
    if closed:
        break
print(f"{time.time() - t0:.1f} s, answered {status.split(b' ')[1].decode() if status else 'nothing'}")
PY
)
  echo "$name: a client trickling its body at 1 byte/s is kept $kept"
  sed -i '/^body_read_timeout_seconds/d' "$work/agregat.toml"
  stop
done
