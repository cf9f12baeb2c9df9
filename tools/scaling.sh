#!/bin/sh
# The scaling table of docs/PERFORMANCE.md ("How cost grows with emulated
# CPUs"): munmap-storm, madvise-dontneed and exit-storm at 1, 2, 4, 8, 16,
# 64 and 256 emulated CPUs on this host, as Markdown rows on stdout.
#
#   tools/scaling.sh [MMEMU] [SECONDS] [CPUS...] > /tmp/scaling.md
#
# MMEMU defaults to target/release/mmemu, SECONDS (the --seconds budget of
# each run) to 3; CPUS to "1 2 4 8 16 64 256".  Each run is
# `mmemu run SCENARIO --cpus N --seconds S --seed 7 --json` under
# /usr/bin/time (for the peak RSS).  Columns:
#   ops/s      the report's ops_per_sec (syscalls of the scenario's loop)
#   IPIs       cross calls delivered (sum of the report's per-CPU `cal`)
#   µs/IPI     elapsed / IPIs delivered: the emulated work is the IPIs,
#              since every call of one mm interrupts every other CPU
#   µs/op      elapsed / ops (the figure for exit-storm, whose processes
#              are separate mms)
#   KiB/CPU    host memory per emulated CPU: (peak RSS - peak RSS of the
#              scenario's 2-CPU row) / (CPUs - 2), for rows above 2 CPUs
#              (the emulated RAM and the page cache a run touches are about
#              the same in both, so they cancel; a 1-CPU run takes no IPIs
#              and so runs many more rounds: not a base)
# Needs jq.  Prints the load average before and after.
set -u
MMEMU=${1:-target/release/mmemu}
SECS=${2:-3}
shift 2 2>/dev/null || shift $#
CPUS=${*:-1 2 4 8 16 64 256}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| scenario | CPUs | ops/s | IPIs | µs/IPI | µs/op | peak RSS MiB | KiB/CPU |"
echo "|---|---|---|---|---|---|---|---|"
for s in munmap-storm madvise-dontneed exit-storm; do
  base_n=; base_rss=
  for n in $CPUS; do
    out=$(/usr/bin/time -f 'RSS %M' -o /tmp/scaling.time "$MMEMU" run "$s" --cpus "$n" --seconds "$SECS" --seed 7 --json 2>/tmp/scaling.err)
    if [ -z "$out" ]; then
      echo "| $s | $n | refused: $(head -1 /tmp/scaling.err | sed 's/|/\\|/g') | | | | | |"
      continue
    fi
    rss_kib=$(sed -n 's/^RSS //p' /tmp/scaling.time)
    if [ -z "$base_n" ] && [ "$n" -ge 2 ]; then base_n=$n; base_rss=$rss_kib; fi
    if [ -n "$base_n" ] && [ "$n" -gt "$base_n" ]; then per=$(( (rss_kib - base_rss) / (n - base_n) )); else per=-; fi
    echo "$out" | jq -r --arg s "$s" --argjson n "$n" --argjson rss "$rss_kib" --arg per "$per" '
      (.interrupts.CAL | add) as $ipis |
      "| \($s) | \($n) | \(.ops_per_sec | round) | \($ipis) | \(if $ipis > 0 then (.elapsed_s * 1e6 / $ipis * 100 | round / 100) else "-" end) | \(if .ops > 0 then (.elapsed_s * 1e6 / .ops * 100 | round / 100) else "-" end) | \($rss / 1024 | round) | \($per) |"'
  done
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f /tmp/scaling.time /tmp/scaling.err
