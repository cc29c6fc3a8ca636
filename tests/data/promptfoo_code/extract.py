"""Reduce promptfoo's `eval -o out.json` to the verdicts the tests compare (one file per folder).

Usage: python3 extract.py out.json expected.json PROMPTFOO_VERSION
"""

import json
import sys


def main(src: str, dst: str, version: str) -> None:
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    rows = []
    for r in data["results"]["results"]:
        grading = r.get("gradingResult") or {}
        output = (r.get("response") or {}).get("output")
        rows.append(
            {
                "testIdx": r["testIdx"],
                "promptIdx": r["promptIdx"],
                "description": (r.get("testCase") or {}).get("description"),
                # 0 none, 1 a failed assertion, 2 an error of the case
                "status": {0: "passed", 1: "failed", 2: "error"}[r.get("failureReason", 0)],
                "score": r["score"],
                "output": output if isinstance(output, str) or output is None else json.dumps(output),
                "namedScores": r.get("namedScores", {}),
                "components": [
                    {"type": (c.get("assertion") or {}).get("type"), "pass": c["pass"], "score": c["score"]}
                    for c in grading.get("componentResults", [])
                    if c.get("assertion")
                ],
                "error": (r.get("error") or "").split("\n")[0][:300],
            }
        )
    rows.sort(key=lambda x: (x["testIdx"], x["promptIdx"]))
    with open(dst, "w", encoding="utf-8") as f:
        json.dump({"promptfooVersion": version, "results": rows}, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
