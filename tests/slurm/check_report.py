"""Checks a study report against its run records: every configuration finished, the CSV's
numbers are the summaries' numbers, the efficiency follows from the throughputs, and
every mesh trained the same model as the baseline (losses equal to fp tolerance).
usage: check_report.py STUDY_DIR STEPS NAME..."""
import csv
import json
import os
import sys

d, steps, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
study = json.load(open(os.path.join(d, "study.json")))
rows = {r["name"]: r for r in csv.DictReader(open(os.path.join(d, "report.csv")))}
assert set(rows) == set(names), ("report.csv rows", sorted(rows), "expected", sorted(names))
summ = {}
for c in study["configs"]:
    s = json.load(open(os.path.join(c["run_dir"], "summary-%s.json" % c["job_id"])))
    r = rows[c["name"]]
    assert r["status"] == "ok", r
    assert int(r["ranks"]) == c["ranks"] == s["world_size"], (r, s["world_size"])
    assert int(r["steps"]) == len(s["steps"]) == steps, (r["steps"], len(s["steps"]), steps)
    for k in ("tokens_per_s", "median_step_time_s", "mfu", "final_loss"):
        assert abs(float(r[k]) - s[k]) <= 1e-9 * abs(s[k]), (c["name"], k, r[k], s[k])
    assert int(r["peak_memory_bytes_per_rank"]) == max(s["peak_memory_bytes"]), r
    for m, v in c["mesh"].items():
        assert s["mesh"].get(m, 1) == v, (c["name"], c["mesh"], s["mesh"])
    summ[c["name"]] = s
base = min(rows.values(), key=lambda r: int(r["ranks"]))
btps, branks = float(base["tokens_per_s"]), int(base["ranks"])
for name, r in rows.items():
    ideal = btps * int(r["ranks"]) / branks
    assert abs(float(r["ideal_tokens_per_s"]) - ideal) <= 1e-9 * ideal, (name, r)
    eff = float(r["tokens_per_s"]) / ideal
    assert abs(float(r["efficiency"]) - eff) <= 1e-9, (name, r["efficiency"], eff)
    parts = [float(r[k]) for k in ("compute_s_per_step", "comm_wait_s_per_step", "other_s_per_step")]
    assert min(parts) >= 0 and parts[0] > 0, (name, parts)
    assert sum(parts) <= float(r["median_step_time_s"]) * 1.5 + 1e-3, (name, parts, r["median_step_time_s"])
ref = [s["loss"] for s in summ[base["name"]]["steps"]]
for name, s in summ.items():
    got = [x["loss"] for x in s["steps"]]
    for a, b in zip(ref, got):
        assert abs(a - b) <= 1e-4 * abs(a), ("losses differ", name, ref, got)
print("report.csv matches the %d run summaries; every mesh's losses match %s (final %.5f)"
      % (len(summ), base["name"], ref[-1]))
