"""Everything that talks to MLflow, called by the session on the controller; it knows nothing about
pytest and imports no reporter.

- `client.py`: importing mlflow quietly with short network limits, one-line errors, text without
  credentials, batched logging, runs marked FAILED when cut short, the experiment.
- `prompts.py`: `prompts:/name/3` references, resolved once per session (`PromptResolver`).
- `registry.py`: registering a suite's own prompts (chat prompts, model config, linked to the
  experiment) and a repair's proposal.
- `layout.py`: what the session's and suites' runs hold (names, tags, params, metrics, notes,
  dataset, the case table); `SessionMeta`. `repair_layout.py`: a repair's run.
- `runs.py`: the parent run, a child run per suite and per repair, and the read-back check.
- `trace_build.py`: a case (or a repair's case) as a trace for MLflow's evaluation views
  (`trace_entities.py`: the span, TraceInfo and assessments MLflow's store takes);
  `traces.py` writes them and counts them back.
- `upload.py`: `report_run` (log, or keep a pending-upload file) and `upload_pending`.
- `baseline.py`: a baseline read from an earlier session run (`--promptopt-baseline mlflow:...`).
"""
