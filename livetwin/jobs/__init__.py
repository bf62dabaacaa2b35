"""Jobs that read history and state and write results back through ingest: calibration,
seasonal baselines, and the lineage they record. `livetwin.jobs.builtins.register_builtins`
is how the composition root makes them runnable on its scheduler."""
