#!/usr/bin/env bash
# Install everything (see tools/setup.sh) and run the whole suite: ruff, then trial.
# As root the network-namespace lab tests run too; TEREDO_REQUIRE_LAB=1 (set by CI)
# turns a lab test that would skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== trial"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
.venv/bin/python -m twisted.trial --reporter=verbose "${@:-tests}" 2>&1 | tee "$log" || status=$?
# trial's closing line, restated in the plain form CI reads: "N passed, N failed, N skipped".
summary=$(grep -E '^(PASSED|FAILED) \(' "$log" | tail -n 1)
count() { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 || true; }
passed=$(count successes); failures=$(count failures); errors=$(count errors)
skips=$(count skips); unexpected=$(count unexpectedSuccesses)
failed=$(( ${failures:-0} + ${errors:-0} + ${unexpected:-0} ))
echo "tests: ${passed:-0} passed, ${failed} failed, ${skips:-0} skipped"
if [ -z "$summary" ] || [ "$failed" != 0 ]; then status=1; fi
exit "$status"
