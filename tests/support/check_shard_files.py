"""Reads a shardflow checkpoint the way docs/checkpoint.md says a reader without shardflow can:
every shard file's size and metadata CRC-32C (the bytes outside the shards' stored data, by
the documented formula), and every tensor reassembled from the shard datasets with h5py,
against the consolidated file. Usage: check_shard_files.py CKPT_ROOT CONSOLIDATED.h5"""
import json
import math
import sys

import h5py
import numpy as np


def crc32c(data: bytes) -> int:  # Castagnoli, reflected 0x82F63B78, init/final xor 0xFFFFFFFF
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    c = 0xFFFFFFFF
    for byte in data:
        c = (c >> 8) ^ table[(c ^ byte) & 0xFF]
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283
root, consolidated = sys.argv[1], sys.argv[2]
d = root + "/" + open(root + "/latest").read().strip()
m = json.load(open(d + "/manifest.json"))
size = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "i32": 4, "i64": 8}


def stored(t, s):  # bytes of a shard's raw data in its file (docs/checkpoint.md)
    e, es = s["extent"], size[t["dtype"]]
    if m["version"] < 3 or len(e) == 0:
        return es * math.prod(e)
    cols = e[1] if len(e) > 1 else 1
    bc = s["block_cols"] if len(e) > 1 else 1
    tile = s["block_rows"] * bc * math.prod(e[2:]) * es
    return math.ceil(e[0] / s["block_rows"]) * math.ceil(cols / bc) * tile


padded = 0
for f in m["files"]:
    data = open(f"{d}/{f['name']}", "rb").read()
    skip = sorted((s["file_offset"], s["file_offset"] + stored(t, s))
                  for t in m["tensors"] for s in t["shards"] if s["file"] == f["name"] and s["file_offset"] >= 0)
    padded += sum(1 for t in m["tensors"] for s in t["shards"]
                  if s["file"] == f["name"] and stored(t, s) > size[t["dtype"]] * math.prod(s["extent"]))
    kept, pos = b"", 0
    for a, e in skip:
        kept, pos = kept + data[pos:a], e
    assert len(data) == f["size"], (f["name"], len(data), f["size"])
    got = "%08x" % crc32c(kept + data[pos:])
    assert got == f["meta_crc32c"], (f["name"], got, f["meta_crc32c"])
print(f"version {m['version']}: {len(m['files'])} shard files, sizes and metadata CRC-32C as documented "
      f"({padded} shards with padded tiles)")
with h5py.File(consolidated, "r") as full:
    for t in m["tensors"]:
        whole = np.empty(t["shape"], dtype=np.float32)
        for s in t["shards"]:
            with h5py.File(f"{d}/{s['file']}", "r") as f:
                whole[tuple(slice(o, o + e) for o, e in zip(s["offset"], s["extent"]))] = f[s["dataset"]][()]
        assert np.array_equal(whole, full[t["name"]][()]), t["name"]
        print(f"{t['name']}: {t['shape']} from {len(t['shards'])} shard(s) = consolidated")
print("OK")
