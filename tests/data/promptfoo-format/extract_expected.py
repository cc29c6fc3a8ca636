"""Reduce a promptfoo run of one config folder to expected.json (see regenerate.sh).

Usage: python3 extract_expected.py WORK_DIR expected.json PROMPTFOO_VERSION EXIT_CODE
"""

import json
import os
import sys


def main(work, dst, version, rc):
    out = {"promptfooVersion": version, "exitCode": int(rc), "results": None, "refusal": None}
    path = os.path.join(work, "out.json")
    if not os.path.exists(path):  # promptfoo refused the config: keep the first error line
        log = open(os.path.join(work, "log.txt")).read().splitlines()
        out["refusal"] = next((line for line in log if "Error" in line or "Invalid" in line), log[-1] if log else "")
    else:
        data = json.load(open(path))
        rows = []
        for r in data["results"]["results"]:
            gr = r.get("gradingResult") or {}
            error = r.get("error") or ""
            rows.append(
                {
                    "testIdx": r["testIdx"],
                    "promptIdx": r["promptIdx"],
                    "vars": r.get("vars", {}),
                    "output": (r.get("response") or {}).get("output"),
                    "success": r["success"],
                    "failureReason": r.get("failureReason", 0),  # 1: failed checks, 2: error
                    "error": error.splitlines()[0] if error else None,
                    "score": r["score"],
                    "namedScores": r.get("namedScores", {}),
                    # an assert-set's own result names its type in metadata.assertionSet
                    "components": [
                        {
                            "type": (c.get("assertion") or {}).get("type")
                            or ((c.get("metadata") or {}).get("assertionSet") or {}).get("type"),
                            "pass": c["pass"],
                            "score": c["score"],
                        }
                        for c in gr.get("componentResults", [])
                    ],
                }
            )
        rows.sort(key=lambda x: (x["testIdx"], x["promptIdx"]))
        out["results"] = rows
        out["promptMetrics"] = [
            {"raw": p.get("raw"), "namedScores": (p.get("metrics") or {}).get("namedScores", {})}
            for p in data["results"].get("prompts", [])
        ]
    with open(dst, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
