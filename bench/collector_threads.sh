#!/usr/bin/env bash
# Where a collector's CPU goes per report: each of its threads' CPU time (utime + stime from
# /proc) and, where `perf` may count tracepoints, its system calls, over a window inside a long
# saturation phase of benches/collector_load.rs (64 agents on loopback, 5 kB reports), divided
# by the reports the collector received in that window (its own counter).
#
#   bash bench/collector_threads.sh                      # the default (glibc) build
#   bash bench/collector_threads.sh --features tcmalloc  # extra arguments go to `cargo bench`
#
# Env: GRADTEL_BENCH_STEPS (default 5000: the phase must outlast the window), WINDOW_S
# (default 5), SKIP_S (default 2: the connections' start). The estimators' and Parquet work of
# the window's reports partly falls after it, so the total is close to, not equal to, the
# bench's own "all CPU counted" figure.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --bench collector_load "$@" --no-run 2>&1 |
  sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
[ -x "$bin" ] || { echo "no bench binary" >&2; exit 1; }
GRADTEL_BENCH_STEPS=${GRADTEL_BENCH_STEPS:-5000} GRADTEL_BENCH_TENSORS=1 \
  GRADTEL_BENCH_VALUES=1000 "$bin" --bench > /dev/null 2>&1 &
bench=$!
pid=""
# The bench kills its collector only when it ends by itself.
trap 'kill $bench $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  pid=$(pgrep -P "$bench" -f gradtel-collector || true)
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { echo "the collector did not start" >&2; exit 1; }
sleep "${SKIP_S:-2}"

ports=$(ss -ltnp | grep "pid=$pid," | grep -o '127\.0\.0\.1:[0-9]*' | cut -d: -f2)
received() {
  for port in $ports; do
    { exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 &&
      grep -m1 '^gradtel_collector_reports_received_total' <&3 | awk '{print $2}'
      exec 3<&-; } 2>/dev/null || true
  done | head -1
}
threads() {
  for t in /proc/"$pid"/task/*; do
    echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done | sort
}

r0=$(received)
threads > /tmp/gradtel_threads.0
events=""
for s in futex recvfrom writev write epoll_wait fdatasync; do events+="syscalls:sys_enter_$s,"; done
if perf stat -e "${events%,}" -p "$pid" -o /tmp/gradtel_syscalls.txt -- sleep "${WINDOW_S:-5}" \
  > /dev/null 2>&1; then
  have_perf=1
else
  have_perf=0
  sleep "${WINDOW_S:-5}"
fi
r1=$(received)
threads > /tmp/gradtel_threads.1
n=$((r1 - r0))
hz=$(getconf CLK_TCK)
echo "reports received in the window: $n"
join /tmp/gradtel_threads.0 /tmp/gradtel_threads.1 | awk -v n="$n" -v hz="$hz" '
  { d = $5 - $3; if (d > 0) { printf "  %-7s %-18s %6.1f us per report\n", $1, $2, d * 1e6 / hz / n; t += d } }
  END { printf "  all threads                %6.1f us per report = %.0f reports per CPU-second\n", t * 1e6 / hz / n, n * hz / t }'
if [ "$have_perf" = 1 ]; then
  echo "system calls per report:"
  awk -v n="$n" '/syscalls:sys_enter_/ { gsub(",", "", $1); sub("syscalls:sys_enter_", "", $2); printf "  %-11s %.3f\n", $2, $1 / n }' \
    /tmp/gradtel_syscalls.txt
fi
