#!/bin/sh
# Runs every CUnit test program in $BUILD/tests (or those named as
# arguments) and prints one closing line "N passed, N failed" (plus
# ", N skipped" when tests were registered inactive: a case that cannot
# run here, e.g. test_python's, is counted as skipped, never as passed).
# Exit status: 0 when every program passed.
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.." || exit 1
[ $# -gt 0 ] || set -- "$BUILD"/tests/test_*
passed=0 failed=0 skipped=0 progs_failed=""
for t in "$@"; do
	[ -x "$t" ] || continue
	name=$(basename "$t")
	log="$BUILD/tests/$name.log"
	echo "== $name"
	start=$(date +%s)
	OUTBOX_BUILD="$BUILD" "$t" >"$log" 2>&1
	rc=$?
	end=$(date +%s)
	# CUnit's summary: "asserts  N  N  N  N  n/a" and
	# "tests  total ran passed failed inactive"
	line=$(grep -E '^ +tests +[0-9]+' "$log" | tail -1)
	p=$(echo "$line" | awk '{print $4}')
	f=$(echo "$line" | awk '{print $5}')
	s=$(echo "$line" | awk '{print $6}')
	[ -n "$p" ] || p=0
	[ -n "$f" ] || f=0
	[ -n "$s" ] || s=0
	skipped=$((skipped + s))
	if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
	passed=$((passed + p)); failed=$((failed + f))
	if [ "$f" -ne 0 ]; then
		progs_failed="$progs_failed $name"
		echo "   FAILED (exit $rc) - last lines of $log:"
		tail -25 "$log" | sed 's/^/   | /'
	else
		if [ "$s" -ne 0 ]; then
			echo "   $p tests passed, $s skipped ($((end - start)) s):"
			grep '^SKIPPED ' "$log" | sed 's/^/   | /'
		else
			echo "   $p tests passed ($((end - start)) s)"
		fi
	fi
done
[ -z "$progs_failed" ] || echo "failed programs:$progs_failed"
if [ "$skipped" -ne 0 ]; then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
