"""Runners map cases to results: in this process (threads, batches), or on Spark."""
