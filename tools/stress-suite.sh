#!/usr/bin/env bash
# The suite under stress (docs/development.md, "Is the suite deterministic?"): RUNS consecutive `CI=true .ci/run`
# on a fresh clone of one commit, BURNERS processes spinning at 100 % of a core beside them the whole time.
# Each run's output goes to DIR/runN.log and a line per run to DIR/summary.txt; the exit status is 0 only when
# every run passed.  Usage: tools/stress-suite.sh [RUNS [BURNERS [DIR [COMMIT]]]]
set -uo pipefail
runs=${1:-10}
burners=${2:-2}
out=${3:-build/stress}
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=${4:-$(git -C "$repo" rev-parse HEAD)}
mkdir -p "$out" && out=$(cd "$out" && pwd)
clone=$(mktemp -d "${TMPDIR:-/tmp}/bipsim-stress.XXXXXX")
git clone -q "$repo" "$clone" && git -C "$clone" checkout -q "$commit" || exit 2
pids=()
cleanup() {
	((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
	rm -rf "$clone"
}
trap cleanup EXIT
for _ in $(seq 1 "$burners"); do
	python3 -c 'while True: pass' &
	pids+=($!)
done
echo "commit $(git -C "$clone" log --oneline -1), $runs runs, $burners burners, logs in $out" | tee "$out/summary.txt"
failed=0
for i in $(seq 1 "$runs"); do
	start=$(date +%s)
	(cd "$clone" && CI=true bash .ci/run) >"$out/run$i.log" 2>&1
	rc=$?
	last=$(grep -E '[0-9]+ (passed|failed)' "$out/run$i.log" | tail -1)
	echo "run $i: exit $rc, $(($(date +%s) - start)) s, $last" | tee -a "$out/summary.txt"
	((rc == 0)) || failed=$((failed + 1))
done
echo "$((runs - failed)) of $runs runs passed" | tee -a "$out/summary.txt"
((failed == 0))
