"""Jobs that read history and state and write results back through ingest."""
