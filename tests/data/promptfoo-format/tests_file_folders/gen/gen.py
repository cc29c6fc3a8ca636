def generate_tests():
    return [
        {
            "description": "generated, vars file beside the generator",
            "vars": "lyon.yaml",
            "assert": [{"type": "contains", "value": "Lyon"}],
        }
    ]
