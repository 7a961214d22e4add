"""Start-up time of ``quantnet --help`` against importing every command module (what the CLI did
before commands loaded lazily), in the same run, as a ratio. Target: ``--help`` under 0.5 s.

    python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, check=True)
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    sys.path.insert(0, str(ROOT))
    from quantnet.cli import COMMANDS

    eager = "import " + ", ".join(sorted({module for module, _ in COMMANDS.values()}))
    cases = {
        "python -c pass": ["-c", "pass"],
        "quantnet --help": ["-m", "quantnet.cli", "--help"],
        "quantnet backtest --help": ["-m", "quantnet.cli", "backtest", "--help"],
        "import every command": ["-c", eager],
    }
    medians = {}
    print(f"{'case':<28}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, args in cases.items():
        times = timed(args, runs)
        medians[name] = statistics.median(times)
        print(f"{name:<28}{medians[name]:>10.3f}{min(times):>8.3f}{max(times):>8.3f}")
    ratio = medians["quantnet --help"] / medians["import every command"]
    print(f"\n--help / import every command: {ratio:.2f}x")


if __name__ == "__main__":
    main()
