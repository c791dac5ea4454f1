# per compute-task-kind medians (ms per step, steps 4+) of shardflow train --trace DIR, for several DIRs
import json, re, sys, statistics as S, collections
cols = []
for d in sys.argv[1:]:
    ev = [e for e in json.load(open(d + "/trace.rank0.json"))["traceEvents"] if e.get("ph") == "X"]
    steps = []
    for e in ev:
        if e["name"] == "step.begin":
            steps.append(collections.Counter())
        if steps and e.get("tid") == 0:
            n = re.sub(r"layer\d+", "layer#", re.sub(r"\.mb\d+", "", e["name"]))
            steps[-1][n] += e["dur"] / 1e3
    st = steps[3:]
    names = set().union(*st)
    cols.append((d, {n: S.median(s[n] for s in st) for n in names}, S.median(sum(s.values()) for s in st)))
names = sorted(set().union(*(c[1] for c in cols)), key=lambda n: -cols[0][1].get(n, 0))
print("%-50s" % "task (ms/step, median)" + "".join("%14s" % c[0].split("/")[-1][-14:] for c in cols))
for n in names:
    print("%-50s" % n[:50] + "".join("%14.2f" % c[1].get(n, 0) for c in cols))
print("%-50s" % "compute total" + "".join("%14.2f" % c[2] for c in cols))
