"""Python assertion helpers for the promptfoo ground-truth config.

Each function receives (output, context) like promptfoo's file:// python asserts.
"""


def is_short(output, context):
    """bool: pass when the output is shorter than 20 characters."""
    return len(output) < 20


def yes_ratio(output, context):
    """float: fraction of whitespace-separated words equal to 'yes'."""
    words = output.split()
    if not words:
        return 0.0
    return sum(1 for w in words if w == "yes") / len(words)


def mentions_paris(output, context):
    """dict: pass/score/reason depending on whether 'Paris' is in the output."""
    found = "Paris" in output
    return {
        "pass": found,
        "score": 0.9 if found else 0.1,
        "reason": "found Paris" if found else "no Paris",
    }
