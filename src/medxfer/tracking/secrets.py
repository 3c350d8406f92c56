"""Keep credentials out of what a run logs.

Credentials reach medxfer through the environment (MLflow's ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``,
libpq's ``PGPASSWORD`` or ``~/.pgpass``), but a user may still write one into a URI (``postgresql://u:pw@host/db``,
``MLFLOW_TRACKING_URI``). Everything a run logs from the config (``config.yaml``, params, error messages) passes
through :func:`redact` first.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:password@host  ->  scheme://user:***@host
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@/\s]+)@")
# ?password=...&  (libpq and SQLAlchemy accept credentials as query parameters too)
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|token|access_token|secret)=)(?P<secret>[^&\s]+)",
                           re.IGNORECASE)
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|credential)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with the passwords of URIs in it, and secret query parameters, replaced by ``***``."""
    text = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", text)


def redact(value: Any) -> Any:
    """A copy of a config-like value (dicts, lists, strings) with credentials masked: passwords inside URIs and
    the values of keys that name a secret (``password``, ``token``, ``secret``, ``api_key``...)."""
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value
