"""medxfer's Hydra configs, installed as the package ``medxfer.conf`` (see setup.py); nothing here is code."""
