"""``medxfer-zoo``: the model zoo.

    medxfer-zoo list [format=json]
    medxfer-zoo fetch [models=[mobilenetv1_100_nudity,inception_v3_nsfwjs]]
    medxfer-zoo predict model=mobilenetv1_100_nudity image=cat.png [format=json]
"""

from __future__ import annotations

import sys

from medxfer.cli._errors import reports_errors
from medxfer.cli._warnings import filter_known_warnings
from medxfer.config import config_dir

COMMANDS = ("list", "fetch", "predict")


@reports_errors
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    filter_known_warnings()
    from hydra import compose, initialize_config_dir

    from medxfer.stages.zoo import run_zoo
    from medxfer.workflows.grid import study_models

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="model_zoo", overrides=argv[1:])
    print(run_zoo(argv[0], cfg, study_models), flush=True)  # its errors are medxfer's own: reports_errors exits 2


if __name__ == "__main__":
    main()
