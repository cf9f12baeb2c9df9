#!/bin/sh
# The "emulator versus this host" table of docs/FIDELITY.md: `mmemu diff`
# of every example script, as Markdown rows on stdout.
#
#   tools/fidelity.sh [MMEMU] [ITERATIONS] > /tmp/rows.md
#
# MMEMU defaults to target/release/mmemu, ITERATIONS to 50.  Every script
# runs with --cpus 2 (this project's hosts have 2 CPUs) and --runs 3.  A
# script the host refuses gets one row with the refusal.  Needs jq.
set -u
MMEMU=${1:-target/release/mmemu}
N=${2:-50}
echo "| script | row | CPU | emulator / iter | host / iter | ratio | status |"
echo "|---|---|---|---|---|---|---|"
for f in examples/scripts/*.mmemu; do
  name=$(basename "$f" .mmemu)
  out=$("$MMEMU" diff "$f" --cpus 2 --iterations "$N" --runs 3 --json 2>/tmp/fidelity.err)
  if [ -z "$out" ]; then
    why=$(sed 's/^error: //; s/|/\\|/g' /tmp/fidelity.err | head -1)
    echo "| $name | - | - | - | - | - | refused: $why |"
    continue
  fi
  echo "$out" | jq -r --arg n "$name" '.rows[] |
    "| \($n) | \(.row) | \(.cpu) | \(.emulator * 1000 | round / 1000) | \(if .host == null then "-" else (.host * 1000 | round / 1000) end) | \(if .ratio == null then "-" else (.ratio * 100 | round / 100) end) | \(.status) |"'
done
rm -f /tmp/fidelity.err
