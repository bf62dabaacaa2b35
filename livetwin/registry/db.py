"""The registry's and the lineage's databases are service databases: see livetwin/store/servicedb.py
(kept so that `from livetwin.registry.db import SqliteFile` goes on working)."""

from livetwin.store.servicedb import SqliteFile, open_service_db

__all__ = ["SqliteFile", "open_service_db"]
