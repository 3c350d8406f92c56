"""``medxfer-reproduce RUN_ID [key=value ...]``: rerun a tracked cell from its logged config and compare.

    medxfer-reproduce 3f2a...c1                               # the default store (mlruns/mlflow.db)
    medxfer-reproduce 3f2a...c1 tracking.uri=http://127.0.0.1:5000
    medxfer-reproduce 3f2a...c1 extract.batch_size=8 --tolerance 1e-6

Exit status 0 when every metric matches within the tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from medxfer.cli._errors import reports_errors
import medxfer.config  # noqa: F401 - registers resolvers
from medxfer.cli._warnings import filter_known_warnings


@reports_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="medxfer-reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id")
    parser.add_argument("overrides", nargs="*", help="key=value overrides; tracking.uri=<uri> selects the store")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest accepted |difference| per metric (score runs: 0; fine-tune: 0 if deterministic, else 0.05)")
    args = parser.parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    overrides = []
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"override {item!r} is not key=value")
        if item.startswith("tracking.uri="):
            uri = item.split("=", 1)[1]
        else:
            overrides.append(item)
    filter_known_warnings()
    from medxfer.workflows.reproduce import reproduce

    comparison = reproduce(args.run_id, overrides, tracking_uri=uri, tolerance=args.tolerance)
    print(f"original run {comparison.original}  ->  reproduction {comparison.reproduction}")
    print(comparison.table())
    for w in comparison.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    verdict = "MATCH" if comparison.matches else "DIFFERS"
    print(f"{verdict}: largest |difference| {comparison.max_difference:.3g} (tolerance {comparison.tolerance:g})")
    sys.exit(0 if comparison.matches else 1)


if __name__ == "__main__":
    main()
