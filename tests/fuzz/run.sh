#!/bin/bash
# Runs every libFuzzer target in $FUZZ_BUILD (or those named as arguments)
# for $FUZZ_SECONDS each, $FUZZ_JOBS at a time (default: one per CPU),
# starting from its seed corpus tests/fuzz/<name>/ (read only; new inputs
# go to a scratch directory). Fails when a target crashes; the crashing
# input is kept in $FUZZ_BUILD/crashes/.
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-300}
FUZZ_JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
cd "$(dirname "$0")/../.." || exit 1
[ $# -gt 0 ] || set -- "$FUZZ_BUILD"/fuzz_*
mkdir -p "$FUZZ_BUILD/crashes" "$FUZZ_BUILD/status"

# one target; its verdict in $FUZZ_BUILD/status/<name>
run_one() {
	f=$1
	name=$(basename "$f" | sed 's/^fuzz_//')
	seeds="tests/fuzz/$name"
	work="$FUZZ_BUILD/corpus/$name"
	mkdir -p "$work"
	dict=""
	[ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
	log="$FUZZ_BUILD/$name.log"
	# shellcheck disable=SC2086
	"$f" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$FUZZ_BUILD/crashes/$name-" \
		$dict "$work" "$seeds" >"$log" 2>&1
	echo $? >"$FUZZ_BUILD/status/$name"
}

running=0
for f in "$@"; do
	[ -x "$f" ] || continue
	run_one "$f" &
	running=$((running + 1))
	if [ "$running" -ge "$FUZZ_JOBS" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait

failed=""
for f in "$@"; do
	[ -x "$f" ] || continue
	name=$(basename "$f" | sed 's/^fuzz_//')
	log="$FUZZ_BUILD/$name.log"
	rc=$(cat "$FUZZ_BUILD/status/$name" 2>/dev/null || echo 99)
	execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
	echo "== fuzz_$name (${FUZZ_SECONDS}s)"
	if [ "$rc" -ne 0 ]; then
		failed="$failed fuzz_$name"
		echo "   FAILED (exit $rc) after ${execs:-?} executions - last lines of $log:"
		tail -30 "$log" | sed 's/^/   | /'
	else
		echo "   ${execs:-?} executions, no crash"
	fi
done
[ -z "$failed" ] || { echo "failed fuzz targets:$failed"; exit 1; }
echo "fuzz: every target ran clean"
