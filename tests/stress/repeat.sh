#!/usr/bin/env bash
# Stress check for issue 11 (a rank aborting with "terminate called without an active exception" at
# exit): run every multi-process test (2 gloo ranks: mp.spawn or torchrun) N times while busy loops
# keep the other core loaded, the conditions under which it was seen. Not collected by pytest.
#
#   tests/stress/repeat.sh 30                                   # every multi-process test file
#   tests/stress/repeat.sh 30 tests/integrations/test_examples.py tests/cli/test_cli_torchrun.py   # just these
#
# Environment: PYTHON (default: python), STRESS_LOAD (busy loops, default 1), STRESS_LOGS (folder
# for the logs, default a new /tmp/sparseticket-stress.XXXXXX). Per-test counts and a summary line
# "repeat: N rounds, T tests each, P passed, F failed" at the end; exit status 1 on any failure,
# with the pytest output of each failing round kept in the logs folder.
set -u

ROUNDS=${1:?usage: tests/stress/repeat.sh N [TEST_FILE...]}
shift
cd "$(dirname "$0")/../.." || exit 2
PYTHON=${PYTHON:-python}
if [ $# -gt 0 ]; then
  FILES=("$@")
else
  mapfile -t FILES < <(grep -l "spawn\|torch.distributed.run\|torchrun" tests/*/test_*.py)
fi
LOGS=${STRESS_LOGS:-$(mktemp -d /tmp/sparseticket-stress.XXXXXX)}
mkdir -p "$LOGS"

LOAD_PIDS=()
stop_load() {
  for pid in "${LOAD_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${LOAD_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  LOAD_PIDS=()
}
trap stop_load EXIT
# Ctrl-C or SIGTERM: stop after the current round and still print the counts of the finished rounds
interrupted=0
trap 'interrupted=1' INT TERM
for _ in $(seq 1 "${STRESS_LOAD:-1}"); do
  (while :; do :; done) &
  LOAD_PIDS+=($!)
done

echo "repeat: ${#FILES[@]} files x $ROUNDS rounds, ${#LOAD_PIDS[@]} busy loop(s), logs in $LOGS"
failed_rounds=0
done_rounds=0
for round in $(seq 1 "$ROUNDS"); do
  start=$SECONDS
  "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$LOGS/round-$round.xml" "${FILES[@]}" \
    > "$LOGS/round-$round.log" 2>&1
  status=$?
  if [ $status -eq 2 ] && [ $interrupted -eq 1 ]; then  # pytest itself was interrupted: round incomplete
    rm -f "$LOGS/round-$round.xml" "$LOGS/round-$round.log"
    break
  fi
  done_rounds=$round
  echo "round $round/$ROUNDS: $(tail -n 1 "$LOGS/round-$round.log") ($((SECONDS - start)) s)"
  if [ $status -eq 0 ]; then
    rm -f "$LOGS/round-$round.log"
  else
    failed_rounds=$((failed_rounds + 1))
  fi
  [ $interrupted -eq 1 ] && break
done
[ $interrupted -eq 1 ] && echo "repeat: interrupted after $done_rounds of $ROUNDS rounds"

# Tally every round's junit report: per test "passed/failed", then the summary line.
"$PYTHON" - "$LOGS" "$done_rounds" <<'PY'
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

logs, rounds = Path(sys.argv[1]), int(sys.argv[2])
passed, failed, skipped, per_round = Counter(), Counter(), Counter(), []
for report in sorted(logs.glob("round-*.xml")):
    cases = list(ElementTree.parse(report).iter("testcase"))
    per_round.append(len(cases))
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed[name] += 1
        elif case.find("skipped") is not None:
            skipped[name] += 1
        else:
            passed[name] += 1
for name in sorted(set(passed) | set(failed) | set(skipped)):
    extra = f" {skipped[name]:3d} skipped" if skipped[name] else ""
    mark = "  FAILED" if failed[name] else ""
    print(f"{passed[name]:4d} passed {failed[name]:3d} failed{extra}  {name}{mark}")
missing = rounds - len(per_round)  # a round whose pytest crashed before writing its report
each = max(per_round, default=0)
print(f"repeat: {rounds} rounds, {each} tests each, {sum(passed.values())} passed, "
      f"{sum(failed.values()) + missing * each} failed"
      + (f", {sum(skipped.values())} skipped" if skipped else ""))
sys.exit(1 if failed or missing else 0)
PY
tally=$?
if [ $failed_rounds -gt 0 ] || [ $tally -ne 0 ]; then
  echo "repeat: failing rounds' output kept in $LOGS"
  exit 1
fi
[ $interrupted -eq 0 ] || exit 130
