"""Reporters: terminal, JSON (and later HTML, MLflow), all reading one `RunSummary`."""
