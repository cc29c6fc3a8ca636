"""DSPy repair of failing prompts (`--promptopt-repair`): see docs/repair.md."""
