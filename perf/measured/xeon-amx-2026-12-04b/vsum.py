# summarise oneDNN verbose exec lines (2.x or 3.x format) from stdin: matmul/reorder by implementation and shape
import sys, re, collections
who = sys.argv[1]
agg = collections.OrderedDict()
for line in sys.stdin:
    if "exec" not in line or not line.startswith(("onednn_verbose", "dnnl_verbose")):
        continue
    f = line.strip().split(",")
    try:
        i = f.index("exec")
    except ValueError:
        continue
    rest = f[i + 1:]
    if rest and rest[0] == "cpu":
        rest = rest[1:]
    prim, impl = rest[0], rest[1]
    shape = next((x for x in reversed(rest) if re.match(r"^[\dx:]+$", x) and "x" in x), "?")
    mds = next((x for x in rest if "src" in x or "wei" in x), "")
    mds = " ".join(t.replace("::f0", "").replace(":f0", "").replace("blocked:", "") for t in mds.split())[:100]
    try:
        ms = float(f[-1])
    except ValueError:
        ms = 0.0
    k = (prim, impl, shape, mds)
    c = agg.setdefault(k, [0, 0.0])
    c[0] += 1
    c[1] += ms
print(f"# {who}: oneDNN verbose exec summary: primitive, implementation, shape, memory descriptors, calls, mean ms")
for (prim, impl, shape, mds), (n, t) in agg.items():
    print(f"{who:9} {prim:8} {impl:28} {shape:28} {n:6d} {t / n:9.4f}  {mds}")
