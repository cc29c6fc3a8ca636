# promptfoo's tests from Python: `generate_tests` unless the reference names a function, called
# with the entry's `config` when it has one.
def generate_tests(config=None):
    n = (config or {}).get("n", 2)
    return [{"vars": {"city": f"C{i}"}, "assert": [{"type": "contains", "value": f"C{i}"}]} for i in range(n)]


def one_failing():
    return [{"vars": {"city": "P"}, "assert": [{"type": "equals", "value": "City: Q"}]}]
