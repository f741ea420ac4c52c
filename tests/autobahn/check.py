#!/usr/bin/env python3
"""Checks kosoku results.

conformance INDEX EXPECTED: every case OK / NON-STRICT / INFORMATIONAL with behaviorClose OK or
INFORMATIONAL, and the results (without timings and report file names) equal EXPECTED.
Set AUTOBAHN_BLESS=1 to rewrite EXPECTED from INDEX.

limit DIR CAP: group 9 at the production message cap: every case whose message is larger than CAP
closed with 1009; the others passed.
"""
import json
import os
import sys

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}


def normalise(index):
    agents = list(index.values())
    if len(agents) != 1:
        sys.exit(f"expected one agent in the report, found {len(agents)}")
    return {
        case: {k: v for k, v in result.items() if k not in ("duration", "reportfile")}
        for case, result in agents[0].items()
    }


def conformance(index_path, expected_path):
    with open(index_path) as f:
        actual = normalise(json.load(f))
    failing = {
        case: r
        for case, r in actual.items()
        if r.get("behavior") not in PASSING or r.get("behaviorClose") not in PASSING_CLOSE
    }
    counts = {}
    for r in actual.values():
        counts[r.get("behavior")] = counts.get(r.get("behavior"), 0) + 1
    print(f"autobahn: {len(actual)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if failing:
        for case, r in sorted(failing.items()):
            print(f"  FAIL {case}: {r}")
        sys.exit(1)
    if os.environ.get("AUTOBAHN_BLESS") == "1":
        with open(expected_path, "w") as f:
            json.dump({"smithers-gateway": actual}, f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"autobahn: wrote {expected_path}")
        return
    with open(expected_path) as f:
        expected = normalise(json.load(f))
    differing = sorted(
        case for case in set(actual) | set(expected) if actual.get(case) != expected.get(case)
    )
    if differing:
        for case in differing:
            print(f"  DIFF {case}: expected {expected.get(case)} got {actual.get(case)}")
        sys.exit(f"autobahn: {len(differing)} cases differ from {expected_path}")
    print(f"autobahn: 0 differences from {expected_path}")


def limit(directory, cap):
    cap = int(cap)
    with open(os.path.join(directory, "index.json")) as f:
        results = normalise(json.load(f))
    closed_1009 = 0
    passed = 0
    problems = []
    for case, summary in sorted(results.items()):
        code = summary.get("remoteCloseCode")
        if code == 1009:
            closed_1009 += 1
        elif summary.get("behavior") in PASSING:
            passed += 1
        else:
            problems.append((case, summary))
    print(f"autobahn limit run (cap {cap} B): {len(results)} cases, {passed} passed, {closed_1009} closed 1009")
    if problems:
        for case, summary in problems:
            print(f"  FAIL {case}: {summary}")
        sys.exit(1)
    # 9.1.3/9.2.3 send exactly 1 MiB (at the cap); 9.1.4/9.2.4 send 4 MiB (over it).
    for case, expect_1009 in (("9.1.3", False), ("9.2.3", False), ("9.1.4", True), ("9.2.4", True)):
        got_1009 = results.get(case, {}).get("remoteCloseCode") == 1009
        if case in results and got_1009 != expect_1009:
            sys.exit(f"autobahn limit run: case {case} closed with {results[case].get('remoteCloseCode')}")
    if closed_1009 == 0:
        sys.exit("autobahn limit run: no case closed with 1009; the cap was not exercised")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("conformance", "limit"):
        sys.exit(__doc__)
    {"conformance": conformance, "limit": limit}[sys.argv[1]](sys.argv[2], sys.argv[3])
