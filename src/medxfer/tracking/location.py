"""Where a tracking store lives, checked before MLflow touches it.

A mistyped SQLite path must not silently start a second store, and an unwritable one must fail at once naming
the path (SQLAlchemy would retry for minutes, then print its own traceback). Artifacts of a SQLite store go
beside it, in ``<db folder>/artifacts``, so a study never ends up split over two places.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from medxfer.errors import MedxferError

#: URI schemes MLflow can track to (a ``+driver`` suffix is allowed: ``postgresql+psycopg2``).
SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "http", "https", "file", "databricks", "databricks-uc")
#: The name of the folder medxfer creates on first use without ``tracking.create=true``: the project's store.
DEFAULT_STORE_FOLDER = "mlruns"
URI_HINT = ("tracking.uri takes sqlite:////absolute/path/mlflow.db, http(s)://host:port (an MLflow server) or "
            "postgresql://user@host:port/db")


class StoreLocationError(MedxferError, RuntimeError):
    """The tracking URI is malformed, or its SQLite file cannot be created or written; the message names it."""


def check_uri(uri: str) -> str:
    """The scheme of ``uri`` (without a driver suffix); a value without a known scheme is an error."""
    scheme = urlparse(uri).scheme.lower().split("+")[0]
    if scheme not in SCHEMES or len(scheme) < 2:  # len: a Windows drive letter parses as a scheme
        raise StoreLocationError(f"tracking.uri={uri!r} is not a tracking URI (scheme {scheme or 'missing'!r})",
                                 hint=URI_HINT)
    return scheme


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (a relative path is taken from the working directory), or
    None for an in-memory database."""
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///"):
        if rest in ("", "//", "///:memory:") or rest.startswith("//:memory:"):
            return None
        raise StoreLocationError(f"tracking.uri={uri!r}: a SQLite URI has three slashes before the path",
                                 hint="sqlite:////absolute/path/mlflow.db (four slashes for an absolute path)")
    path = rest[3:].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path).expanduser().absolute()


def check_sqlite_store(db: Path, *, create: bool | None) -> None:
    """Make sure SQLite can open ``db`` for writing, fast, or raise naming the path.

    A missing folder is created when ``create`` is true, or when ``create`` is None (the default) and it is a
    folder called ``mlruns`` inside an existing folder (the project's default store, ``<root>/mlruns``); any other
    missing folder (a mistyped path) is an error. The folder must be writable (SQLite writes its journal beside
    the database) and an existing database file must be writable.
    """
    folder = db.parent
    if not folder.exists():
        allowed = create if create is not None else (folder.name == DEFAULT_STORE_FOLDER and folder.parent.is_dir())
        if not allowed:
            raise StoreLocationError(
                f"the folder {folder} of the tracking store {db.name} does not exist",
                hint="check tracking.uri for a typo; to start a new store there, add tracking.create=true",
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreLocationError(f"cannot create the tracking store's folder {folder}: {_reason(err)}",
                                     hint="point tracking.uri at a writable folder") from None
    if not folder.is_dir():
        raise StoreLocationError(f"the tracking store's folder {folder} is not a folder",
                                 hint="point tracking.uri at a file inside a folder")
    _check_writable_folder(folder)
    if db.exists():
        if db.is_dir():
            raise StoreLocationError(f"the tracking store {db} is a folder, not a SQLite file",
                                     hint="point tracking.uri at the mlflow.db file inside it")
        try:
            with open(db, "r+b"):
                pass
        except OSError as err:
            raise StoreLocationError(f"the tracking store {db} is not writable: {_reason(err)}",
                                     hint="fix its permissions, or point tracking.uri at a copy you can write") from None


def _check_writable_folder(folder: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".medxfer-write-check-", dir=folder)
    except OSError as err:
        raise StoreLocationError(
            f"the tracking store's folder {folder} is not writable: {_reason(err)} (SQLite writes the database and "
            "its journal there)",
            hint="fix the folder's permissions or mount, or point tracking.uri at a writable folder",
        ) from None
    os.close(fd)
    os.unlink(probe)


def _reason(err: OSError) -> str:
    if err.errno == errno.EROFS:
        return "read-only file system"
    return err.strerror or str(err)


def default_artifact_root(uri: str) -> str | None:
    """Where artifacts go when ``tracking.artifact_root`` is null: ``<db folder>/artifacts`` for a SQLite store
    (beside it), else None (a server's own ``--artifacts-destination``)."""
    if urlparse(uri).scheme.lower() != "sqlite":
        return None
    db = sqlite_path(uri)
    return None if db is None else str(db.parent / "artifacts")
