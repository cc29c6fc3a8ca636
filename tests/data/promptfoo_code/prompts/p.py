def make(context):
    return "PYFN " + context["vars"]["name"] + " " + str(context["provider"]) + " " + str(context["config"])
