"""runner.py - lists and runs the Python test cases for tests/test_python.c.

    runner.py --list        one line per test case: "ID" or "ID<TAB>reason"
                            when the case cannot run here (it is then
                            registered inactive, and counted as skipped)
    runner.py ID            runs one case; exit 0 passed, 1 failed,
                            3 skipped at run time (the C side counts that
                            as a failure: a skip must be known at --list)

IDs are unittest names, e.g. test_binding.BindingTest.test_round_trip.
Modules may define skip_reasons() -> {id prefix: reason}, evaluated once at
--list: the only place a test may be declared skipped, with its reason.
"""

import glob
import importlib
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def modules():
    return sorted(os.path.basename(p)[:-3]
                  for p in glob.glob(os.path.join(HERE, "test_*.py")))


def cases(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from cases(t)
        else:
            yield t


def list_cases():
    loader = unittest.TestLoader()
    for name in modules():
        mod = importlib.import_module(name)
        reasons = {}
        if hasattr(mod, "skip_reasons"):
            reasons = mod.skip_reasons()
        for t in cases(loader.loadTestsFromModule(mod)):
            tid = t.id()
            why = next((r for p, r in reasons.items()
                        if r and tid.startswith(p)), None)
            print(tid if not why else "%s\t%s" % (tid, why.replace("\t", " ")
                                                  .replace("\n", " ")))


def run_case(tid):
    suite = unittest.TestLoader().loadTestsFromName(tid)
    res = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    sys.stdout.flush()
    if res.failures or res.errors or res.testsRun != 1:
        return 1
    if res.skipped:
        return 3
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--list"]:
        list_cases()
        sys.exit(0)
    if len(sys.argv) == 2:
        sys.exit(run_case(sys.argv[1]))
    sys.stderr.write(__doc__)
    sys.exit(2)
