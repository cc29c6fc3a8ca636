def get_var(var_name, prompt, other_vars):
    return {"output": "PY:" + var_name + ":" + str(sorted(other_vars.keys())) + ":" + prompt + "\n"}
