"""Runs inside the peers' venv: datatrove's Gopher quality and C4 quality filters on the same docs.

argv: docs.jsonl -> prints JSON {docs, gopher_s, c4_s}
"""
import json
import sys
import time


def main():
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter

    docs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
    out = {"docs": len(docs)}
    for name, flt in (("gopher", GopherQualityFilter()), ("c4", C4QualityFilter(filter_no_terminal_punct=False))):
        items = [Document(text=d["text"], id=str(i)) for i, d in enumerate(docs)]
        t = time.perf_counter()
        for doc in items:
            flt.filter(doc)
        out[f"{name}_s"] = time.perf_counter() - t
    print(json.dumps(out))


if __name__ == "__main__":  # datatrove's executors need a __main__ guard
    main()
