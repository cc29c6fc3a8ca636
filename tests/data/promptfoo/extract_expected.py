"""Reduce a real promptfoo `eval -o out.json` file to expected.json.

Usage: python3 extract_expected.py /tmp/pf/out.json expected.json PROMPTFOO_VERSION
"""

import json
import sys


def main(src, dst, version):
    with open(src) as f:
        data = json.load(f)
    rows = []
    for r in data["results"]["results"]:
        gr = r.get("gradingResult") or {}
        rows.append(
            {
                "testIdx": r["testIdx"],
                "promptIdx": r["promptIdx"],
                "description": (r.get("testCase") or {}).get("description"),
                "vars": r.get("vars", {}),
                "output": (r.get("response") or {}).get("output"),
                "success": r["success"],
                "score": r["score"],
                "namedScores": r.get("namedScores", {}),
                "components": [
                    {
                        "type": (c.get("assertion") or {}).get("type"),
                        "pass": c["pass"],
                        "score": c["score"],
                    }
                    for c in gr.get("componentResults", [])
                ],
            }
        )
    rows.sort(key=lambda x: (x["testIdx"], x["promptIdx"]))
    out = {
        "promptfooVersion": version,
        "prompts": [p.get("raw") for p in data["results"].get("prompts", [])],
        "results": rows,
    }
    with open(dst, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
