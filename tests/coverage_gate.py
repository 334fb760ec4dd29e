"""The coverage gate of CI: the sans-I/O core fully covered, the I/O layer nearly so.

Run the fast suite under branch coverage, then this script on its JSON report::

    python -m pytest -q -p no:cacheprovider --ignore=tests/test_autobahn.py \\
        --ignore=tests/test_browser.py --ignore=tests/test_bench_smoke.py \\
        --cov=streamcore --cov-branch --cov-report=json:coverage.json
    python tests/coverage_gate.py coverage.json

It fails (exit 1) unless

* every module of ``streamcore/proto/`` is at 100 % branch coverage;
* ``streamcore/aio/`` as a whole, and each of its modules, is at least at 95 %;
* no line of ``proto/`` or ``aio/`` carries a ``pragma: no cover`` (nothing on a
  backpressure or error path is excluded: a branch that cannot be reached is removed).

The percentages are coverage.py's: statements and branches together
(``(covered lines + covered branches) / (lines + branches)``).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamcore"

#: (package directory, minimum per module, minimum for the package as a whole)
GATES = [("proto", 100.0, 100.0), ("aio", 95.0, 95.0)]

_PRAGMA = re.compile(r"pragma:\s*no\s*(cover|branch)", re.IGNORECASE)


@dataclass
class Figures:
    statements: int = 0
    covered_lines: int = 0
    branches: int = 0
    covered_branches: int = 0

    def add(self, other: Figures) -> None:
        self.statements += other.statements
        self.covered_lines += other.covered_lines
        self.branches += other.branches
        self.covered_branches += other.covered_branches

    @property
    def percent(self) -> float:
        total = self.statements + self.branches
        if total == 0:
            return 100.0
        return 100.0 * (self.covered_lines + self.covered_branches) / total


def figures_of(summary: dict[str, int]) -> Figures:
    return Figures(summary["num_statements"], summary["covered_lines"],
                   summary.get("num_branches", 0), summary.get("covered_branches", 0))


def module_files(package: str) -> list[Path]:
    return sorted((PACKAGE / package).glob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def pragmas(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _PRAGMA.search(line):
                found.append(f"{relative(path)}:{number}: {line.strip()}")
    return found


def check(report: dict[str, object]) -> tuple[list[str], list[str]]:
    """``(table lines, failures)`` for a coverage.py JSON report."""
    files = report.get("files")
    if not isinstance(files, dict):
        return [], ["not a coverage.py JSON report (no 'files')"]
    if not report.get("meta", {}).get("branch_coverage"):  # type: ignore[attr-defined]
        return [], ["the report has no branch data: run with --cov-branch"]
    measured = {Path(name).as_posix(): data for name, data in files.items()}
    table = [f"{'module':36} {'stmts':>6} {'miss':>5} {'branch':>6} {'part':>5} {'cover':>7}  gate"]
    failures: list[str] = []
    for package, module_min, package_min in GATES:
        paths = module_files(package)
        whole = Figures()
        for path in paths:
            name = relative(path)
            data = measured.get(name) or measured.get(str(path))
            if data is None:
                if not path.read_text().strip():
                    continue  # an empty __init__.py has nothing to cover
                failures.append(f"{name}: not measured (imported by no test?)")
                table.append(f"{name:36} {'-':>6} {'-':>5} {'-':>6} {'-':>5} {'-':>7}  FAIL")
                continue
            fig = figures_of(data["summary"])
            whole.add(fig)
            ok = fig.percent >= module_min
            if not ok:
                failures.append(f"{name}: {fig.percent:.2f} % < {module_min:g} % "
                                f"(missing lines {data.get('missing_lines')}, "
                                f"branches {data.get('missing_branches')})")
            table.append(f"{name:36} {fig.statements:6} {fig.statements - fig.covered_lines:5} "
                         f"{fig.branches:6} {fig.branches - fig.covered_branches:5} "
                         f"{fig.percent:6.2f}%  {'ok' if ok else 'FAIL'} (>= {module_min:g})")
        ok = whole.percent >= package_min
        if not ok:
            failures.append(f"streamcore/{package}/: {whole.percent:.2f} % < {package_min:g} %")
        table.append(f"{'streamcore/' + package + '/ (all)':36} {whole.statements:6} "
                     f"{whole.statements - whole.covered_lines:5} {whole.branches:6} "
                     f"{whole.branches - whole.covered_branches:5} {whole.percent:6.2f}%  "
                     f"{'ok' if ok else 'FAIL'} (>= {package_min:g})")
        failures += [f"excluded by pragma: {hit}" for hit in pragmas(paths)]
    return table, failures


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} coverage.json", file=sys.stderr)
        return 2
    report = json.loads(Path(argv[1]).read_text())
    table, failures = check(report)
    print("\n".join(table))
    if failures:
        print("\ncoverage gate FAILED:")
        print("\n".join(f"  {failure}" for failure in failures))
        return 1
    print("\ncoverage gate passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
