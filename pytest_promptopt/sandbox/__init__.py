"""User code: JavaScript and Python checks, transforms, prompt functions, var loaders and Nunjucks
filters, each call with a time limit, run the way promptfoo runs them.

`Sandbox` (sandbox.py) owns the engines: Python and node child processes (workers.py,
`py_runner.py`, `js_runner.mjs`) and mini-racer contexts (`harness.js`). `javascript.py` and
`python_code.py` call code as promptfoo does; `scripts.py` holds the forms that sit around a case
(transforms, prompt functions, var loaders, filters). This room imports nothing above it: the
assertions and the suite loader call it.
"""

from .errors import ScriptFault, ScriptRaised, ScriptTimeout
from .sandbox import Sandbox, sandbox_for

__all__ = ["DEFAULT_SCRIPT_TIMEOUT_S", "Sandbox", "ScriptFault", "ScriptRaised", "ScriptTimeout", "sandbox_for"]

DEFAULT_SCRIPT_TIMEOUT_S = 5.0  # --promptopt-script-timeout: one call of user code
