"""``medxfer-reproduce``: not available yet in this version (tracked as issue #7)."""

from __future__ import annotations

import sys


def main() -> None:
    print("medxfer-reproduce is not available yet in this version of medxfer (planned: issue #7).", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
