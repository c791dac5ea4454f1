#!/usr/bin/env python3
"""Measure one GPU the way the simulator's cluster files describe it, and time real training
steps of MODEL.md's model on it, so that `shardflow simulate --cluster FILE --devices 1` can be
set against a measured step on the same kind of device.

Five parts, each printed and written to the summary JSON (--summary):
  gemm       matrix products by size (square n x n x n, n = 64 .. 16384) in bf16, tf32 and f32
             (tf32 off), plus the products of each training configuration's layers: TFLOP/s and
             the fraction of the datasheet peak (--peak-*), i.e. the cluster file's
             gemm_efficiency points (size = cube root of m*n*k).
  graph_gemm the same square products replayed from a CUDA graph: the device's own time, which
             the eager loop's host dispatch (about 20 us a call) hides below n ~ 2048.
  bandwidth  device copy and a two-input add over 2 GiB: GB/s counting bytes read and written,
             and the fraction of --memory-bandwidth-gbs (the cluster file's elementwise_efficiency).
  train      one-GPU training steps of MODEL.md's model (perf/torch_peer.py's Gpt: explicit causal
             softmax attention, as shardflow computes it) under torch.autocast(bfloat16) with
             f32 master weights and AdamW (--optimizer: fused, the default, or foreach), gradient
             clipping to 1.0: forward + backward + clip + AdamW, synchronised, median over the
             steps after the warm-up; the peak of torch.cuda.max_memory_allocated. Each
             configuration is also run with scaled_dot_product_attention (flash attention) to show
             what materialising the scores costs.
  profile    one profiled step of the first configuration (both attentions): GPU time by kernel
             kind (GEMM, softmax, elementwise, optimizer, ...), and the GPU's busy time.

PyTorch's cuBLAS is the GEMM here, not shardflow's (shardflow's compute runs on the host): the
figures describe the device, and the step is the peer that a simulated step is compared with.

Usage (a machine with a CUDA GPU and PyTorch): python3 perf/gpu_probe.py --summary probe.json
       --device cpu --quick runs every code path on tiny sizes (a check of this script only).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # torch_peer re-executes itself unless these are 1

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_peer  # noqa: E402  (MODEL.md's model: Gpt, Layer, rmsnorm, param_groups, model_flops_per_step)

# The configurations trained (vocab 51200 as in the GPT-3 mapping of MODEL.md; ffn ~ 8H/3).
CONFIGS = [
    dict(name="h4096_l8_b2", vocab=51200, seq=2048, hidden=4096, heads=32, ffn=10944, layers=8, batch=2),
    dict(name="h2048_l8_b4", vocab=51200, seq=2048, hidden=2048, heads=16, ffn=5472, layers=8, batch=4),
    dict(name="h8192_l4_b1", vocab=51200, seq=2048, hidden=8192, heads=64, ffn=21888, layers=4, batch=1),
]
QUICK = [dict(name="tiny", vocab=256, seq=64, hidden=64, heads=4, ffn=176, layers=2, batch=2)]


class Timer:
    def __init__(self, dev):
        self.dev = dev

    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def run(self, fn, min_s=0.02, batches=5):
        """Median seconds per call over `batches` batches, each of enough calls to last min_s."""
        fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        one = max(time.perf_counter() - t0, 1e-7)
        reps = max(1, min(1000, int(min_s / one)))
        out = []
        for _ in range(batches):
            self.sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            self.sync()
            out.append((time.perf_counter() - t0) / reps)
        return statistics.median(out)


def gemm_part(dev, timer, args, configs):
    res = {"square": [], "model": []}
    kinds = [("bf16", torch.bfloat16, False, args.peak_bf16), ("tf32", torch.float32, True, args.peak_tf32),
             ("f32", torch.float32, False, args.peak_f32)]
    sizes = [16, 32] if args.quick else [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    for kind, dt, tf32, peak in kinds:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for n in sizes:
            if kind == "f32" and n > 8192:
                continue  # 16384^3 in f32 takes 0.13 s a product; the curve is flat by then
            a = torch.randn(n, n, device=dev, dtype=dt)
            b = torch.randn(n, n, device=dev, dtype=dt)
            s = timer.run(lambda: torch.mm(a, b))
            tf = 2.0 * n ** 3 / s / 1e12
            res["square"].append({"dtype": kind, "n": n, "seconds": s, "tflops": tf, "fraction_of_peak": tf / peak})
            print(f"gemm {kind:4s} n={n:6d}  {s * 1e6:10.1f} us  {tf:7.1f} TFLOP/s  {tf / peak:5.3f} of peak", flush=True)
            del a, b
    torch.backends.cuda.matmul.allow_tf32 = False
    # the linear layers of each configuration, forward (x W^T) shapes, bf16
    for c in configs:
        T, H, F_, V = c["batch"] * c["seq"], c["hidden"], c["ffn"], c["vocab"]
        for what, m, n, k in (("qkv", T, 3 * H, H), ("out", T, H, H), ("gate_up", T, 2 * F_, H), ("down", T, H, F_),
                              ("lm_head", T, V, H), ("scores", c["seq"], c["seq"], H // c["heads"])):
            a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
            s = timer.run(lambda: F.linear(a, w))
            tf = 2.0 * m * n * k / s / 1e12
            res["model"].append({"config": c["name"], "product": what, "m": m, "n": n, "k": k,
                                 "cube_root": (m * n * k) ** (1 / 3), "seconds": s, "tflops": tf,
                                 "fraction_of_peak": tf / args.peak_bf16})
            print(f"gemm bf16 {c['name']:12s} {what:8s} {m}x{n}x{k}  {s * 1e6:9.1f} us  {tf:7.1f} TFLOP/s "
                  f"{tf / args.peak_bf16:5.3f}", flush=True)
            del a, w
    return res


def graph_seconds(dev, fn, reps):
    """Seconds per call of fn on the device: `reps` calls captured in one CUDA graph, the median
    of 5 replays timed with CUDA events (after one untimed replay)."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize(dev)
    times = []
    for _ in range(5):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize(dev)
        times.append(e0.elapsed_time(e1) / 1e3 / reps)
    return statistics.median(times)


def graph_gemm_part(dev, args, configs):
    """Device time of back-to-back products replayed from a CUDA graph (no host dispatch between
    them): what the GPU itself takes, which the eager loop above hides below ~2048."""
    out = []
    sizes = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    for kind, dt, tf32, peak in (("bf16", torch.bfloat16, False, args.peak_bf16),
                                 ("tf32", torch.float32, True, args.peak_tf32),
                                 ("f32", torch.float32, False, args.peak_f32)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for n in sizes:
            reps = 200 if n <= 1024 else 20 if n <= 4096 else 4
            a = torch.randn(n, n, device=dev, dtype=dt)
            b = torch.randn(n, n, device=dev, dtype=dt)
            c = torch.empty(n, n, device=dev, dtype=dt)
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    torch.mm(a, b, out=c)
            torch.cuda.current_stream(dev).wait_stream(side)
            sec = graph_seconds(dev, lambda: torch.mm(a, b, out=c), reps)
            tf = 2.0 * n ** 3 / sec / 1e12
            out.append({"dtype": kind, "n": n, "seconds": sec, "tflops": tf, "fraction_of_peak": tf / peak})
            print(f"graph gemm {kind:4s} n={n:6d}  {sec * 1e6:10.2f} us  {tf:7.1f} TFLOP/s  {tf / peak:5.3f} of peak",
                  flush=True)
            del a, b, c
    torch.backends.cuda.matmul.allow_tf32 = False
    # the attention core's per-head products as PyTorch issues them: one strided-batched
    # product over batch x heads (scores Q K^T, then P V), bf16
    for c in configs:
        BA, S, D = c["batch"] * c["heads"], c["seq"], c["hidden"] // c["heads"]
        for what, (m, n, k) in (("scores", (S, S, D)), ("context", (S, D, S))):
            a = torch.randn(BA, m, k, device=dev, dtype=torch.bfloat16)
            b = torch.randn(BA, k, n, device=dev, dtype=torch.bfloat16)
            o = torch.empty(BA, m, n, device=dev, dtype=torch.bfloat16)
            torch.bmm(a, b, out=o)
            sec = graph_seconds(dev, lambda: torch.bmm(a, b, out=o), 10)
            tf = 2.0 * BA * m * n * k / sec / 1e12
            out.append({"dtype": "bf16", "batched": BA, "m": m, "n": n, "k": k, "config": c["name"], "product": what,
                        "seconds": sec, "tflops": tf, "fraction_of_peak": tf / args.peak_bf16,
                        "cube_root_one": (m * n * k) ** (1 / 3), "cube_root_batch": (BA * m * n * k) ** (1 / 3)})
            print(f"graph bmm  bf16 {c['name']:12s} {what:8s} {BA} x {m}x{n}x{k}  {sec * 1e6:9.1f} us  {tf:7.1f} TFLOP/s "
                  f"{tf / args.peak_bf16:5.3f} of peak", flush=True)
            del a, b, o
    return out


def kernel_category(name):
    n = name.lower()
    for cat, keys in (("attention (flash)", ("flash", "fmha", "attention")),
                      ("cross entropy", ("nll_loss", "log_softmax", "cross_entropy")), ("softmax", ("softmax",)),
                      ("optimizer / clip (multi-tensor)", ("multi_tensor_apply", "foreach", "adam")),
                      ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
                      ("reduce", ("reduce",)), ("embedding / index", ("index", "embedding", "scatter", "gather")),
                      ("copy / cast", ("copy", "memcpy", "memset", "fill")),
                      ("elementwise", ("elementwise", "vectorized", "unrolled"))):
        if any(k in n for k in keys):
            return cat
    return "other"


def profile_part(dev, args, configs):
    """One profiled step of each configuration after the warm-up: the GPU time by kernel kind,
    the sum of kernel times and the GPU's busy time (the union of its kernels) against the step."""
    import tempfile
    from torch.profiler import ProfilerActivity, profile
    out = []
    explicit_core = torch_peer.Layer.__dict__["core"]  # the staticmethod itself
    for c in configs[:1] if not args.quick else configs:
        for attention in ("explicit", "sdpa"):
            torch_peer.Layer.core = explicit_core if attention == "explicit" else staticmethod(sdpa_core)
            V, S, H, A, F_, L, B = (c[k] for k in ("vocab", "seq", "hidden", "heads", "ffn", "layers", "batch"))
            torch.manual_seed(1234)
            with dev:
                net = torch_peer.Gpt(V, S, H, A, F_, L)
            opt = make_adamw(net, dev, args)

            def step():
                train_step(net, opt, dev, V, B, S)

            for _ in range(3):
                step()
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts) as prof:
                t0 = time.perf_counter()
                step()
                wall = time.perf_counter() - t0
            with tempfile.NamedTemporaryFile(suffix=".json") as tf:
                prof.export_chrome_trace(tf.name)
                with open(tf.name) as f:
                    trace = json.load(f)
            want = ("kernel", "gpu_memcpy", "gpu_memset") if dev.type == "cuda" else ("cpu_op",)
            kern = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("cat") in want]
            cats, names = {}, {}
            for e in kern:
                k = kernel_category(e["name"])
                cats[k] = cats.get(k, 0.0) + e["dur"] / 1e6
                names[e["name"][:90]] = names.get(e["name"][:90], 0.0) + e["dur"] / 1e6
            spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in kern)
            busy, end = 0.0, -1e30
            for a0, a1 in spans:
                if a1 > end:
                    busy += a1 - max(a0, end)
                    end = a1
            r = {"config": c["name"], "attention": attention, "optimizer": args.optimizer, "wall_s": wall, "kernels": len(kern),
                 "kernel_sum_s": sum(cats.values()), "busy_s": busy / 1e6, "by_kind_s": cats,
                 "top": sorted(names.items(), key=lambda kv: -kv[1])[:15]}
            out.append(r)
            print(f"profile {c['name']} {attention} {args.optimizer}: step {wall * 1e3:.1f} ms (profiled), {len(kern)} kernels, "
                  f"sum {r['kernel_sum_s'] * 1e3:.1f} ms, GPU busy {r['busy_s'] * 1e3:.1f} ms", flush=True)
            for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
                print(f"   {k:32s} {v * 1e3:8.2f} ms", flush=True)
            for k, v in r["top"][:8]:
                print(f"   top {v * 1e3:8.2f} ms  {k}", flush=True)
            del net, opt
    torch_peer.Layer.core = explicit_core
    return out


def bandwidth_part(dev, timer, args):
    n = (1 << 16) if args.quick else (1 << 29)  # f32 elements: 2 GiB
    x = torch.empty(n, device=dev, dtype=torch.float32).fill_(1.0)
    y = torch.empty_like(x)
    z = torch.empty_like(x).fill_(2.0)
    out = []
    for what, fn, nbytes in (("copy", lambda: y.copy_(x), 8 * n), ("add", lambda: torch.add(x, z, out=y), 12 * n)):
        s = timer.run(fn, min_s=0.05)
        gbs = nbytes / s / 1e9
        out.append({"kernel": what, "bytes": nbytes, "seconds": s, "gbs": gbs,
                    "fraction_of_datasheet": gbs / args.memory_bandwidth_gbs})
        print(f"bandwidth {what:5s} {nbytes / 2**30:5.2f} GiB  {gbs:8.1f} GB/s  "
              f"{gbs / args.memory_bandwidth_gbs:5.3f} of {args.memory_bandwidth_gbs:.0f}", flush=True)
    del x, y, z
    return out


def sdpa_core(q, k, v, mask):
    """torch_peer.Layer.core by scaled_dot_product_attention (flash attention; causal, so the
    additive mask is not needed)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def make_adamw(net, dev, args):
    """AdamW as MODEL.md has it; --optimizer fused is one CUDA kernel pass over the tensors (what
    torchtitan uses), foreach torch's default multi-tensor passes."""
    kw = {"fused": True} if args.optimizer == "fused" and dev.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(torch_peer.param_groups(net), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, **kw)


def train_step(net, opt, dev, V, B, S):
    """One training step on random tokens (forward under bf16 autocast, backward, clip, AdamW),
    synchronised; returns the loss tensor."""
    x = torch.randint(0, V, (B, S), device=dev)
    y = torch.randint(0, V, (B, S), device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        loss = net(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return loss


def train_part(dev, args, configs):
    out = []
    explicit_core = torch_peer.Layer.__dict__["core"]  # the staticmethod itself
    for c in configs:
        for attention in ("explicit", "sdpa"):
            torch_peer.Layer.core = explicit_core if attention == "explicit" else staticmethod(sdpa_core)
            V, S, H, A, F_, L, B = (c[k] for k in ("vocab", "seq", "hidden", "heads", "ffn", "layers", "batch"))
            torch.manual_seed(1234)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            with dev:
                net = torch_peer.Gpt(V, S, H, A, F_, L)
            opt = make_adamw(net, dev, args)
            times, losses = [], []
            for step in range(args.steps):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                loss = train_step(net, opt, dev, V, B, S)  # (its random tokens timed too: tiny)
                times.append(time.perf_counter() - t0)
                losses.append(loss.item())
            med = statistics.median(times[args.warmup:])
            flops = torch_peer.model_flops_per_step(V, S, H, A, F_, L, B * S)
            peak_mem = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
            r = {"config": c["name"], "attention": attention, "optimizer": args.optimizer, "model": {k: c[k] for k in c if k != "name"},
                 "n_params": sum(p.numel() for p in net.parameters()), "steps": args.steps, "warmup": args.warmup,
                 "step_times_s": times, "median_step_time_s": med, "tokens_per_s": B * S / med,
                 "model_flops_per_step": flops, "model_tflops": flops / med / 1e12,
                 "mfu": flops / med / (args.peak_bf16 * 1e12), "peak_memory_bytes": peak_mem,
                 "first_loss": losses[0], "last_loss": losses[-1]}
            out.append(r)
            print(f"train {c['name']:12s} {attention:8s} {args.optimizer:7s} median step {med * 1e3:8.2f} ms  "
                  f"{r['model_tflops']:6.1f} model TFLOP/s  MFU {r['mfu']:.3f}  peak memory {peak_mem / 2**30:6.2f} GiB  "
                  f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
            del net, opt, loss
    torch_peer.Layer.core = explicit_core
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", required=True, help="write the results here (JSON)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    ap.add_argument("--parts", nargs="*", default=["gemm", "graph_gemm", "bandwidth", "train", "profile"],
                    help="any of gemm graph_gemm bandwidth train profile")
    ap.add_argument("--optimizer", choices=["fused", "foreach"], default="fused", help="AdamW's implementation")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    # H200 SXM datasheet, dense: BF16 989.5, TF32 494.5, FP32 67 TFLOPS; HBM3e 4.8 TB/s
    ap.add_argument("--peak-bf16", type=float, default=989.5)
    ap.add_argument("--peak-tf32", type=float, default=494.5)
    ap.add_argument("--peak-f32", type=float, default=67.0)
    ap.add_argument("--memory-bandwidth-gbs", type=float, default=4800.0)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_probe: torch sees no CUDA device (torch.cuda.is_available() is False)")
    configs = QUICK if args.quick else CONFIGS
    info = {"torch": torch.__version__, "device": args.device, "quick": args.quick}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, multiprocessors=p.multi_processor_count, memory_bytes=p.total_memory,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    print("gpu_probe:", json.dumps(info), flush=True)
    timer = Timer(dev)
    res = {"info": info, "peaks": {"bf16": args.peak_bf16, "tf32": args.peak_tf32, "f32": args.peak_f32,
                                   "memory_bandwidth_gbs": args.memory_bandwidth_gbs}}
    t0 = time.perf_counter()
    if "gemm" in args.parts:
        res["gemm"] = gemm_part(dev, timer, args, configs)
    if "bandwidth" in args.parts:
        res["bandwidth"] = bandwidth_part(dev, timer, args)
    if "graph_gemm" in args.parts and dev.type == "cuda":
        res["graph_gemm"] = graph_gemm_part(dev, args, configs)
    if "train" in args.parts:
        res["train"] = train_part(dev, args, configs)
    if "profile" in args.parts:
        res["profile"] = profile_part(dev, args, configs)
    res["probe_seconds"] = time.perf_counter() - t0
    with open(args.summary, "w") as f:
        json.dump(res, f, indent=1)
    print(f"gpu_probe: wrote {args.summary} in {res['probe_seconds']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
