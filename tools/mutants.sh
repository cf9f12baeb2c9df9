#!/bin/sh
# Mutation testing of the files issue 13 names (docs/FIDELITY.md,
# "Mutation testing"): mm-core's arch/, gather/, ops/zap.rs, ops/hugetlb.rs
# and ops/gup.rs, one file at a time, against mm-core's own tests.  Not in
# CI: about 2.5 hours of one core on this 2-core machine (gup.rs and
# arch/arm64.rs have many mutants that hang, each costing the timeout).
#
#   tools/mutants.sh [OUT_DIR] [FILE...]      e.g. tools/mutants.sh /tmp/mut ops/gup.rs
#
# OUT_DIR defaults to target/mutants-runs; FILE defaults to the list below
# (paths under mm-core/src/).  Needs cargo-mutants:
#   cargo install cargo-mutants --version 27.1.0 --locked
# Prints one Markdown row per file: mutants, caught, timeout, unviable,
# missed and the score (caught + timeout) / (mutants - unviable); the
# survivors are in OUT_DIR/<file>/mutants.out/missed.txt, to be judged
# against docs/FIDELITY.md's lists of equivalent mutants.
set -u
OUT=${1:-target/mutants-runs}
[ $# -gt 0 ] && shift
FILES=${*:-arch/x86.rs arch/arm64.rs arch/generic.rs arch/mod.rs gather/mod.rs gather/batch.rs gather/encoded_page.rs gather/table_free.rs ops/zap.rs ops/hugetlb.rs ops/gup.rs}
mkdir -p "$OUT"
echo "| file | commit | mutants | caught | timeout | unviable | missed | score |"
echo "|---|---|---|---|---|---|---|---|"
for f in $FILES; do
  d="$OUT/$(echo "$f" | tr / _)"
  rm -rf "$d"
  env -u CARGO_TARGET_DIR nice -n 19 cargo mutants -p mm-core -f "mm-core/src/$f" --jobs 1 --timeout 20 -o "$d" >"$d.log" 2>&1
  n() { [ -f "$d/mutants.out/$1.txt" ] && wc -l <"$d/mutants.out/$1.txt" | tr -d ' ' || echo 0; }
  c=$(n caught); t=$(n timeout); u=$(n unviable); m=$(n missed)
  all=$((c + t + u + m))
  if [ "$all" -eq 0 ]; then
    echo "| mm-core/src/$f | $(git rev-parse --short HEAD) | error: $(tail -1 "$d.log") | | | | | |"
    continue
  fi
  score=$(awk -v ok=$((c + t)) -v v=$((all - u)) 'BEGIN { printf "%.1f%%", 100 * ok / v }')
  echo "| mm-core/src/$f | $(git rev-parse --short HEAD) | $all | $c | $t | $u | $m | $score |"
done
