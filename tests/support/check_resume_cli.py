"""Checks the files written by check_resume_cli.cmake (see there)."""
import json
import sys

import h5py

work = sys.argv[1]
full = json.load(open(f"{work}/full.json"))["steps"]
resumed = json.load(open(f"{work}/resumed.json"))["steps"]
assert [s["step"] for s in resumed] == [4, 5, 6], resumed
for r in resumed:
    ref = full[r["step"] - 1]["loss"]
    assert abs(r["loss"] - ref) <= 1e-5 * ref, (r["step"], r["loss"], ref)
resumed2 = json.load(open(f"{work}/resumed2.json"))["steps"]
assert [r["loss"] for r in resumed2] == [r["loss"] for r in resumed], (resumed2, resumed)
e1 = json.load(open(f"{work}/eval1.json"))
e3 = json.load(open(f"{work}/eval3.json"))
assert e1["step"] == 6 and e1["sequences"] == e3["sequences"], (e1, e3)
assert abs(e1["loss"] - e3["loss"]) <= 1e-6 * e1["loss"], (e1["loss"], e3["loss"])
with h5py.File(f"{work}/model.h5", "r") as f:
    assert int(f.attrs["step"]) == 6, dict(f.attrs)
    H, F, V, S = 64, 172, 256, 64
    want = {"embed.weight": (V, H), "pos_embed.weight": (S, H), "final_norm.weight": (H,), "lm_head.weight": (V, H)}
    for l in range(2):
        want.update({f"layers.{l}.attn_norm.weight": (H,), f"layers.{l}.attn.qkv.weight": (3 * H, H),
                     f"layers.{l}.attn.out.weight": (H, H), f"layers.{l}.mlp_norm.weight": (H,),
                     f"layers.{l}.mlp.gate_up.weight": (2 * F, H), f"layers.{l}.mlp.down.weight": (H, F)})
    for name, shape in want.items():
        d = f[name]
        assert d.shape == shape and d.dtype == "float32", (name, d.shape, d.dtype)
    assert float(f["layers.0.attn_norm.weight"][0]) != 0.0
print(f"resume/eval/consolidate OK: eval loss {e1['loss']:.6f} on 1 and 3 ranks; losses 4..6 match")
