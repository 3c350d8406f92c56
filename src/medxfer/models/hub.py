"""Whether the Hugging Face hub can be used, decided once and quickly.

Without a network, huggingface_hub retries each download for about a minute before it gives up; one TCP
connection attempt with a short timeout tells the same thing in milliseconds (a failed DNS lookup) or seconds.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 3.0
_FALSE = ("0", "", "false", "no", "off")


def hub_offline_reason() -> str | None:
    """Why the hub cannot be used (``HF_HUB_OFFLINE`` set, or its host does not answer), or None when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in _FALSE:
        return "HF_HUB_OFFLINE is set"
    host, port = _hub_address()
    if not _reachable(host, port):
        return f"{host}:{port} cannot be reached within {CONNECT_TIMEOUT_S:g} s (no network?)"
    return None


def _hub_address() -> tuple[str, int]:
    """Where a download goes first: the HTTPS proxy when one is set, else the hub endpoint (``HF_ENDPOINT``)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy if proxy else os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default_port


@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int) -> bool:
    # cached: a sweep asks once per process, not once per cell
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False
