def get_transform(vars, context):
    return {"extra": "py:" + vars["question"]}
