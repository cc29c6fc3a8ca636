"""Reporters: terminal, JSON and HTML, all reading one `RunSummary` (MLflow's room is `mlflow/`)."""
