# shardflow train --trace DIR (2 ranks): per rank, the median compute per step, the median step,
# the largest gaps between consecutive compute tasks (ms per step) and the wait lane's total
import json, statistics as S, collections, sys
for r in (0, 1):
    ev = [e for e in json.load(open(f"{sys.argv[1]}/trace.rank{r}.json"))["traceEvents"] if e.get("ph") == "X"]
    comp = sorted([e for e in ev if e["tid"] == 0], key=lambda e: e["ts"])
    begins = [e["ts"] for e in comp if e["name"] == "step.begin"]
    steplen = [(b - a) / 1e3 for a, b in zip(begins, begins[1:])]
    per_step, gaps = [], collections.defaultdict(float)
    for e in comp:
        if e["name"] == "step.begin":
            per_step.append(0.0)
        elif per_step:
            per_step[-1] += e["dur"] / 1e3
    for a, b in zip(comp, comp[1:]):
        strip = lambda n: n.split(".mb")[0]
        gaps[(strip(a["name"]), strip(b["name"]))] += (b["ts"] - a["ts"] - a["dur"]) / 1e3 / len(begins)
    print(f"rank {r}: median step {S.median(steplen[3:]):.1f} ms, median compute {S.median(per_step[3:]):.1f} ms, "
          f"all gaps {sum(gaps.values()):.2f} ms/step, wait lane {sum(e['dur'] for e in ev if e['tid'] == 2) / 1e3 / len(begins):.2f} ms/step")
    for (a, b), v in sorted(gaps.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  gap {v:.2f} ms/step after {a} before {b}")
