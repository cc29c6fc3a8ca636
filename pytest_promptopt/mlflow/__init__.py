"""Everything that talks to MLflow, called by the session on the controller; it knows nothing about
pytest and imports no reporter.

- `client.py`: importing mlflow quietly with short network limits, one-line errors, text without
  credentials, batched logging (`BatchedClient`: a run's files and values sent together), runs
  marked FAILED when cut short, the experiment.
- `store.py`: a SQLite store checked before MLflow opens it, and created from a migrated template.
- `writer.py`: the writer process that imports mlflow beside the test loop and logs the run.
- `prompts.py`: `prompts:/name/3` references, resolved once per session (`PromptResolver`).
- `registry.py`: registering a suite's own prompts and a repair's proposal.
- `layout.py`: what each run holds (tags, params, metrics, notes, the case table); `SessionMeta`.
- `runs.py`: the parent run, a child run per suite and per repair, and the read-back check.
- `traces.py`: one trace per case (`--promptopt-mlflow-traces`).
- `upload.py`: `report_run` (a pending-upload file until the run is logged) and `upload_pending`.
- `baseline.py`: a baseline read from an earlier session run (`--promptopt-baseline mlflow:...`).
"""
