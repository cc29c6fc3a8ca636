def get_transform(output, context):
    return output.upper() + "|" + ",".join(sorted(context.keys())) + "|" + str(context.get("prompt"))[:80]


def other(output, context):
    return "OTHER:" + output


def lower(output, context):
    return output.lower()
