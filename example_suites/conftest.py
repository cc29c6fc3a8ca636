"""`pytest --promptopt example_suites` runs the suites that pass their gates.

repair/ holds a suite whose prompt fails its gates on purpose, the starting point of
`--promptopt-repair`. It is left out when pytest walks this folder and runs when named:
`pytest --promptopt example_suites/repair --promptopt-repair` (pytest collects a path given on
the command line even if `collect_ignore` lists it).
"""

collect_ignore = ["repair"]
