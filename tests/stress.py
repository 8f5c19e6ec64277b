"""Hunt flakes: run the suite (or part of it) N times, optionally under CPU load, and report
each failure with the seed that replays it.

    python -m tests.stress --runs 5 --load 1 -- tests/core -k prune
    make test-stress STRESS="--runs 3 --beside -- tests/web"

``--load K`` keeps K busy-looping processes running beside the suite; ``--beside`` runs a second
copy of the same selection at the same time (the way a loaded CI machine or a second clone
does). Every run gets its own seed (``--seed``; hypothesis uses it too), its own key namespaces
(each test makes its own) and, on SQLite, its own test database (named by process id). Two
copies at once need SQLite: on PostgreSQL they would share one test database name.
Results: one line per failure (test id, seed, first line of the error) and a summary, also
written to var/stress/summary.txt with each run's JUnit XML beside it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "stress"


def burn(stop_at: float) -> None:
    """One core's worth of load until ``stop_at`` (wall clock)."""
    n = 0
    while time.time() < stop_at:
        n = (n * 7919 + 1) % 1_000_003


def failures(junit: Path) -> list[tuple[str, str]]:
    """(test id, first line of the error) for each failed or errored test in a JUnit file."""
    if not junit.exists():
        return [("<run>", "no JUnit report: pytest did not finish")]
    found = []
    for case in ET.parse(junit).iter("testcase"):
        for problem in (*case.iter("failure"), *case.iter("error")):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            found.append((name, message[0][:200] if message else ""))
    return found


def run_once(label: str, seed: int, pytest_args: list[str]) -> subprocess.Popen:
    junit = OUT / f"{label}.xml"
    log = (OUT / f"{label}.log").open("w")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--seed={seed}",
        f"--junitxml={junit}",
        *pytest_args,
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="how many rounds (default 5)")
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes beside")
    parser.add_argument("--beside", action="store_true", help="a second copy at the same time")
    parser.add_argument("--seed", type=int, default=None, help="first round's seed")
    parser.add_argument("pytest_args", nargs="*", help="after --: what pytest should run")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    report: list[str] = []
    failed_rounds = 0
    for round_no in range(1, args.runs + 1):
        started = time.monotonic()
        burners = [
            multiprocessing.Process(target=burn, args=(time.time() + 24 * 3600,), daemon=True)
            for _ in range(args.load)
        ]
        for burner in burners:
            burner.start()
        runs = {f"round{round_no}": seed}
        if args.beside:
            runs[f"round{round_no}-beside"] = seed + 1
        procs = {label: run_once(label, s, args.pytest_args) for label, s in runs.items()}
        codes = {label: proc.wait() for label, proc in procs.items()}
        for burner in burners:
            burner.terminate()
        elapsed = time.monotonic() - started
        problems = []
        for label, run_seed in runs.items():
            for test_id, message in failures(OUT / f"{label}.xml"):
                problems.append(f"  FAIL {label} seed={run_seed} {test_id}: {message}")
            if codes[label] != 0 and not any(label in p for p in problems):
                problems.append(f"  FAIL {label} seed={run_seed}: pytest exited {codes[label]}")
        failed_rounds += bool(problems)
        line = f"round {round_no}: {'FAILED' if problems else 'passed'} in {elapsed:.0f} s"
        line += f" (seed {seed}{', beside' if args.beside else ''}, load {args.load})"
        report += [line, *problems]
        print("\n".join([line, *problems]), flush=True)
        seed += 2
    summary = f"{failed_rounds} of {args.runs} rounds had failures"
    report.append(summary)
    (OUT / "summary.txt").write_text("\n".join(report) + "\n")
    print(summary)
    return 1 if failed_rounds else 0


if __name__ == "__main__":
    raise SystemExit(main())
