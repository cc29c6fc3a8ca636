import json
import sys

context = json.loads(sys.argv[1])
print("LEGACY " + context["vars"]["name"] + " " + context["provider"]["id"])
