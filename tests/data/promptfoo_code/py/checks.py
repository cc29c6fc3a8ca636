def get_assert(output, context):
    return "Hello" in output


def scored(output, context):
    return {"pass_": True, "score": 0.75, "reason": "snake", "named_scores": {"quality": 0.8}}


def as_text(output, context):
    return "0.6"


def boom(output, context):
    raise ValueError("boom")


def config_value(output, context):
    return context.get("config", {}).get("want") in output


def named(output, context):
    # a real config's entity scorer: snake_case named scores, read by derivedMetrics
    return {"pass_": True, "score": 0.5, "reason": "counts", "named_scores": {"true_positives": 2, "gold_count": 4}}
