#!/bin/sh
# Time to find each reverted fix (docs/PERFORMANCE.md, "Time to find each
# reverted fix"): `mmemu reproduce SWITCH --json` RUNS times per switch,
# seeds 1..RUNS, as one Markdown table on stdout.
#
#   tools/time-to-find.sh [MMEMU] [RUNS] [SWITCH...] > /tmp/ttf.md
#
# MMEMU defaults to target/release/mmemu, RUNS to 10, the switches to every
# one `mmemu list --json` names.  Each run is `mmemu reproduce SWITCH
# --seed S --json` with the scenario's defaults (CPUs, arch, rounds).
# Columns, medians over the runs:
#   runs        runs made
#   found       runs whose fix-off run had a violation (count switches,
#               whose off state changes counts, not correctness: "counts")
#   reproduced  runs whose verdict was "reproduced" (fix off found it, fix
#               on clean; count switches: both runs ok)
#   first round fix-off `violations.first_violation_at` (runs that found it)
#   ms to first violation   fix-off `violations.first_violation_s`: the
#               rounds' wall time from the start of round 1 to the end of
#               the violating round (boot, setup and teardown excluded)
#   fix-off run ms          fix-off `elapsed_s` (boot, rounds, teardown)
#   command ms  the whole `mmemu reproduce` process (fix off, then fix on,
#               for its default rounds), measured here with `date +%s%N`
# A run whose command failed to print JSON counts in "runs" only; its
# stderr's first line goes to this script's stderr.  With TTF_RAW=FILE
# every run is also appended to FILE as one JSON line (switch, seed and
# the values above).  Needs jq and GNU date.
set -u
MMEMU=${1:-target/release/mmemu}
RUNS=${2:-10}
[ $# -ge 2 ] && shift 2 || shift $#
SWITCHES=${*:-$("$MMEMU" list --json | jq -r '.switches[].name')}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| switch | runs | found | reproduced | median first round | median ms to first violation | median fix-off run ms | median command ms |"
echo "|---|---|---|---|---|---|---|---|"
for sw in $SWITCHES; do
  : > "$tmp/runs"
  seed=1
  while [ "$seed" -le "$RUNS" ]; do
    t0=$(date +%s%N)
    "$MMEMU" reproduce "$sw" --seed "$seed" --json > "$tmp/out" 2> "$tmp/err"
    t1=$(date +%s%N)
    if jq -e . "$tmp/out" > /dev/null 2>&1; then
      jq -c --argjson wall "$(( (t1 - t0) / 1000 ))" --argjson seed "$seed" '{
          switch, seed: $seed, correctness, reproduced,
          found: (.fix_off.violations.count > 0),
          round: .fix_off.violations.first_violation_at,
          ttf: .fix_off.violations.first_violation_s,
          run: .fix_off.elapsed_s,
          wall: ($wall / 1e6)}' "$tmp/out" >> "$tmp/runs"
    else
      echo "$sw seed $seed: $(head -1 "$tmp/err")" >&2
      echo '{"failed": true}' >> "$tmp/runs"
    fi
    seed=$((seed + 1))
  done
  [ -n "${TTF_RAW:-}" ] && cat "$tmp/runs" >> "$TTF_RAW"
  jq -rs --arg sw "$sw" '
    def median: map(select(. != null)) | sort
      | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def ms: if . == null then "-" else (. * 10000 | round / 10) end;
    def num: if . == null then "-" else . end;
    (map(select(.failed | not))) as $ok
    | ($ok | map(select(.correctness)) | length > 0) as $corr
    | "| \($sw) | \(length) | \(if $corr then ($ok | map(select(.found)) | length) else "counts" end) | \($ok | map(select(.reproduced)) | length) | \($ok | map(.round) | median | num) | \($ok | map(.ttf) | median | ms) | \($ok | map(.run) | median | ms) | \($ok | map(.wall) | median | ms) |"
  ' "$tmp/runs"
done
