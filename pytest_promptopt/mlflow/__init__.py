"""Everything that talks to MLflow, called by the session on the controller; it knows nothing about
pytest and imports no reporter.

- `client.py`: importing mlflow quietly with short network limits, one-line errors, text without
  credentials, batched logging, runs marked FAILED when cut short, the experiment.
- `prompts.py`: `prompts:/name/3` references, resolved once per session (`PromptResolver`).
- `registry.py`: registering a suite's own prompts and a repair's proposal.
- `layout.py`: what each run holds (tags, params, metrics, notes, the case table); `SessionMeta`.
- `runs.py`: the parent run, a child run per suite and per repair, and the read-back check.
- `traces.py`: one trace per case (`--promptopt-mlflow-traces`).
- `upload.py`: `report_run` (log, or keep a pending-upload file) and `upload_pending`.
- `baseline.py`: a baseline read from an earlier session run (`--promptopt-baseline mlflow:...`).
"""
