"""Assertions: one grader per type, registered by name, the same names in YAML and Python."""
