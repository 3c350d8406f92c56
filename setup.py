"""Package layout only; the metadata is in pyproject.toml.

The library lives in ``src/medxfer``; its Hydra configs live in the top-level ``conf/`` folder and are installed as
the package ``medxfer.conf`` (a folder mapped to a package: editable installs read ``conf/`` itself, wheels carry
a copy inside ``medxfer/conf``).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages("src") + ["medxfer.conf"],
    package_dir={"": "src", "medxfer.conf": "conf"},
)
