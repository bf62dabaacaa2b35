"""Files in and out: CSV, JSON lines, Excel and Parquet imported through the ingest path under a
mapping (`mapping.py`, `readers.py`, `columns.py`, `importer.py`), and a type's history exported
as Parquet (`export.py`)."""
