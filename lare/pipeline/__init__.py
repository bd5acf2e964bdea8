"""The pipeline: one parameter schema, the preflight, the notebooks' steps (ingest, experiment),
the run folder, figures and the orchestrator behind ``./run_all.sh`` (``python -m lare``)."""
