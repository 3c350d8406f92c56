"""Time ``medxfer-study`` rerun over a store where its cells are FINISHED: this tree against a baseline tree.

    .venv/bin/python benchmarks/study_rerun.py --store /tmp/copy --baseline /path/to/other/checkout/src \\
        -- paths.data_dir=/data paths.cache_dir=/cache finetune.enabled=false analyze.enabled=false

A rerun computes every cell's identity (configs composed, datasets read, image digests looked up, weights named)
and finds each one FINISHED: its time is what a resumed study pays before doing anything. ``--store`` is a
project root holding ``mlruns/`` (a copy: the runs may reap or claim nothing, but do not point this at a store
you care about). The two trees run alternately ``--repeats`` times each, in fresh processes, on the same store;
the last line is ``rerun this/baseline <ratio>`` of the median wall-clock times (below 1: this tree is faster).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _run(src: str, store: str, overrides: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": src, "MEDXFER_ROOT": store, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medxfer.cli.study", *overrides], env=env, cwd=store,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    ran = [int(n) for n in re.findall(r"(\d+) ran,", proc.stdout.split("[study] done:")[-1])]
    if proc.returncode != 0 or not ran or any(ran):
        sys.exit(f"medxfer-study with {src} did not rerun cleanly (exit {proc.returncode}):\n"
                 f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="project root holding a copy of mlruns/")
    parser.add_argument("--baseline", required=True, help="the src/ folder of the baseline checkout")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="medxfer-study overrides (after --)")
    args = parser.parse_args()
    this = str(Path(__file__).resolve().parents[1] / "src")
    times: dict[str, list[float]] = {"this": [], "baseline": []}
    for i in range(args.repeats):
        for name, src in (("baseline", args.baseline), ("this", this)):
            times[name].append(_run(src, args.store, args.overrides))
            print(f"{name:8} run {i + 1}: {times[name][-1]:.1f} s", flush=True)
    this_s, base_s = statistics.median(times["this"]), statistics.median(times["baseline"])
    print(f"median: this {this_s:.1f} s, baseline {base_s:.1f} s (load average {os.getloadavg()[0]:.1f})")
    print(f"rerun this/baseline {this_s / base_s:.2f}")


if __name__ == "__main__":
    main()
