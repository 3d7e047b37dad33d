"""Fuzzing at scale: tests/security/test_fuzz.py with 25,000 generated inputs per target, 100,000 in
all (CI runs 300 per target). Each target is a surface a hostile client controls: the gRPC update
decoder fed random bytes and mutated valid updates, the MQTT frame reassembly, and the coordinator's
validation of whole submissions (any refused one must leave the store unchanged). The figures are
the inputs run, the failures found (any exception but a clean refusal, or a refused input that
changed state) and the time taken.

    python benchmarks/fuzz.py [--examples 25000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

from _report import ROOT, machine, markdown_table, write_section

TESTS = "tests/security/test_fuzz.py"


def run(examples: int) -> tuple[list[list[str]], int, float]:
    """Run the fuzz targets; their table rows, the failures, and the seconds taken."""
    env = {**os.environ, "FEDRL_FUZZ_EXAMPLES": str(examples), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", TESTS, "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
         "-o", "addopts=", "--timeout=0"],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    rows = []
    for block in re.split(r"\n(?=tests/security/test_fuzz.py::)", result.stdout):
        name = re.match(r"tests/security/test_fuzz.py::(\w+)", block)
        counted = re.search(r"(\d+) passing, (\d+) failing, and (\d+) invalid", block)
        if name and counted:
            passing, failing, invalid = (int(n) for n in counted.groups())
            rows.append([name.group(1).removeprefix("test_"), f"{passing + failing:,}", str(failing), str(invalid)])
    failed = 0 if result.returncode == 0 else len(re.findall(r"^FAILED", result.stdout, re.M)) or 1
    if result.returncode != 0:
        print(result.stdout[-4000:])
    return rows, failed, seconds


def main() -> None:
    """Fuzz every target, print and write the report's ``fuzz`` section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=25_000, help="inputs per target")
    args = parser.parse_args()
    rows, failed, seconds = run(args.examples)
    total = sum(int(row[1].replace(",", "")) for row in rows)
    table = markdown_table(["target", "inputs", "failing", "invalid (discarded)"], rows)
    verdict = f"{total:,} inputs in {seconds:.0f} s; failing targets (a crash or a state change): {failed}."
    print(table)
    print(verdict)
    write_section(
        "fuzz",
        f"""## Fuzzing: what a hostile client controls

`tests/security/test_fuzz.py` with {args.examples:,} inputs per target (Hypothesis, derandomised; CI runs
300 per target). A failing input is any exception other than a clean refusal (`Rejected`), or a refused
submission that changed what the server stores.

    python benchmarks/fuzz.py --examples {args.examples}

Measured on {machine()}.

{table}

{verdict}
""",
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
