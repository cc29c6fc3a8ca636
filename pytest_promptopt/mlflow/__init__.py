"""Everything that talks to MLflow, called by the session on the controller; it knows nothing about
pytest and imports no reporter.

- `client.py`: importing mlflow quietly with short network limits, one-line errors, text without
  credentials, batched logging (`BatchedClient`: a run's files and values sent together), runs
  marked FAILED when cut short, the experiment.
- `store.py`: a SQLite store checked before MLflow opens it, and created from a migrated template.
- `writer.py`: the writer process that imports mlflow beside the test loop and logs the run.
- `prompts.py`: `prompts:/name/3` references, resolved once per session (`PromptResolver`).
- `registry.py`: registering a suite's own prompts (chat prompts, model config, linked to the
  experiment) and a repair's proposal.
- `layout.py`: what the session's and suites' runs hold (names, tags, params, metrics, notes,
  dataset, the case table); `SessionMeta`. `repair_layout.py`: a repair's run.
- `runs.py`: the parent run, a child run per suite and per repair, and the read-back check.
- `trace_build.py`: a case (or a repair's case) as a trace for MLflow's evaluation views
  (`trace_entities.py`: the span, TraceInfo and assessments MLflow's store takes);
  `traces.py` writes them and counts them back.
- `upload.py`: `report_run` (a pending-upload file until the run is logged) and `upload_pending`.
- `baseline.py`: a baseline read from an earlier session run (`--promptopt-baseline mlflow:...`).
"""
