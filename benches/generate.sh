#!/usr/bin/env bash
# Generator throughput and peak memory.
#   benches/generate.sh [PEOPLE] [REGION]
# Prints rows/s, rows/s per core (CPU time) and peak RSS, measured in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
people="${1:-10000000}"
region="${2:-61}"
cargo build --release --quiet
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
/usr/bin/time -f '%e %U %S %M' -o "$out/time" \
  ./target/release/agregat generate --region "$region" --people "$people" --seed 42 \
  --as-of 2026-06-30 --out "$out/snap" \
  --secret-file data-samples/SAMPLE-record-key-NOT-FOR-PRODUCTION.secret 2>/dev/null
read -r wall user sys rss_kb < "$out/time"
awk -v n="$people" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss_kb" -v c="$(nproc)" 'BEGIN {
  printf "people %d, cores %d\nwall %.1f s, cpu %.1f s\nrows/s %.0f, rows/s per core (cpu) %.0f\npeak RSS %.0f MiB\n",
    n, c, w, u + s, n / w, n / (u + s), r / 1024 }'
du -sh "$out/snap" | awk '{print "on disk " $1}'
