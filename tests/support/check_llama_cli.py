"""Checks the files written by check_llama_cli.cmake: the training loss fell, the consolidated
checkpoint has docs/model.md's Llama names and shapes, and a NumPy implementation of
docs/model.md's Llama (written from that section alone) computes `shardflow eval`'s loss from
the consolidated weights."""
import json
import sys

import h5py
import numpy as np

work, max_loss = sys.argv[1], float(sys.argv[2])
train = json.load(open(f"{work}/train.json"))
first, final = train["steps"][0]["loss"], train["final_loss"]
assert final < max_loss and final < first, (first, final, max_loss)


V, S, H, A, K, F, L, theta = 256, 64, 128, 4, 2, 344, 4, 10000.0
D = H // A


def rmsnorm(x, g):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g


def rope(x):  # x [B, heads, S, D] at positions 0..S-1
    half = D // 2
    phi = np.arange(S)[:, None] * theta ** (-2.0 * np.arange(half) / D)[None, :]
    c, s = np.cos(phi), np.sin(phi)
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)


with h5py.File(f"{work}/model.h5", "r") as f:
    want = {"embed.weight": (V, H), "final_norm.weight": (H,), "lm_head.weight": (V, H)}
    for l in range(L):
        want.update({f"layers.{l}.attn_norm.weight": (H,), f"layers.{l}.attn.q.weight": (A * D, H),
                     f"layers.{l}.attn.kv.weight": (2 * K * D, H), f"layers.{l}.attn.out.weight": (H, A * D),
                     f"layers.{l}.mlp_norm.weight": (H,), f"layers.{l}.mlp.gate_up.weight": (2 * F, H),
                     f"layers.{l}.mlp.down.weight": (H, F)})
    names = set()
    f.visit(lambda n: names.add(n) if isinstance(f[n], h5py.Dataset) else None)
    assert names == set(want), sorted(names ^ set(want))
    W = {}
    for name, shape in want.items():
        d = f[name]
        assert d.shape == shape and d.dtype == "float32", (name, d.shape, d.dtype)
        W[name] = d[...].astype(np.float64)

data = np.frombuffer(open(f"{work}/tokens.txt", "rb").read(), dtype=np.uint8).astype(np.int64)
B = len(data) // (S + 1)
t = data[: B * (S + 1)].reshape(B, S + 1)
x = W["embed.weight"][t[:, :S]]
mask = np.triu(np.full((S, S), -np.inf), 1)
for l in range(L):
    p = f"layers.{l}."
    n = rmsnorm(x, W[p + "attn_norm.weight"])
    q = (n @ W[p + "attn.q.weight"].T).reshape(B, S, A, D).transpose(0, 2, 1, 3)
    kv = n @ W[p + "attn.kv.weight"].T
    k = kv[..., : K * D].reshape(B, S, K, D).transpose(0, 2, 1, 3)
    v = kv[..., K * D:].reshape(B, S, K, D).transpose(0, 2, 1, 3)
    q, k = rope(q), rope(k)
    g = np.arange(A) // (A // K)  # the kv head of each query head
    sc = q @ k[:, g].transpose(0, 1, 3, 2) / np.sqrt(D) + mask
    sc = np.exp(sc - sc.max(-1, keepdims=True))
    o = (sc / sc.sum(-1, keepdims=True)) @ v[:, g]
    x = x + o.transpose(0, 2, 1, 3).reshape(B, S, A * D) @ W[p + "attn.out.weight"].T
    n = rmsnorm(x, W[p + "mlp_norm.weight"])
    gu = n @ W[p + "mlp.gate_up.weight"].T
    gg, u = gu[..., :F], gu[..., F:]
    x = x + (gg / (1 + np.exp(-gg)) * u) @ W[p + "mlp.down.weight"].T
logits = rmsnorm(x, W["final_norm.weight"]) @ W["lm_head.weight"].T
m = logits.max(-1, keepdims=True)
lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
loss = float((lse - np.take_along_axis(logits, t[:, 1:, None], -1)[..., 0]).mean())
ev = json.load(open(f"{work}/eval.json"))
assert ev["sequences"] == B, (ev, B)
assert abs(ev["loss"] - loss) <= 1e-5 * loss, (ev["loss"], loss)
print(f"llama quickstart OK: loss {first:.4f} -> {final:.4f}; eval {ev['loss']:.6f}, NumPy {loss:.6f}")
