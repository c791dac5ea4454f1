#!/usr/bin/env python3
"""PyTorch peer of `shardflow train`: MODEL.md's byte-level GPT, trained on N processes x
1 thread over gloo, on the same corpus and sizes, in one of three modes (--mode):
  ddp      DistributedDataParallel, eager
  compile  DistributedDataParallel wrapped in torch.compile (inductor's C++ backend)
  fsdp2    FSDP2: fully_shard on every block and on the root (parameters, gradients and
           AdamW state sharded: the peer of shardflow's ZeRO-3)
Run it with a current PyTorch from PyPI, in the venv perf/peer_env.sh creates.

It is the reference that perf/bench_train.py compares shardflow's tokens/s against.
The model follows /work/shared/MODEL.md exactly: byte embeddings + learned positions,
RMSNorm (eps 1e-5, no bias), stacked qkv [3H, H], causal softmax attention per head,
out [H, H], SwiGLU with stacked gate_up [2F, H], down [H, F], final RMSNorm, untied
lm_head [V, H], mean cross entropy over all B*S positions; AdamW beta (0.9, 0.95),
eps 1e-8, weight decay 0.1 on 2-D tensors except embed / pos_embed, gradient clipping to
a global L2 norm of 1.0, linear warm-up then constant learning rate.

--precision bf16 runs the forward (and the loss) under torch.autocast("cpu", bfloat16): the
matmuls take bf16 operands and oneDNN's bf16 kernels, the master weights, gradients and
AdamW state stay f32 -- the peer of shardflow's train.precision = "bf16".

Timing matches the shardflow app: each rank times its step (data already in memory,
forward + backward + DDP all-reduce + clip + AdamW); the slowest rank's time counts; the
summary JSON has the same keys (steps[].step_time_s, median_step_time_s over the steps
after the warm-up, tokens_per_s, mfu when --peak-gflops is given), plus the process CPU
time of each step (steps[].cpu_s, the largest rank's; median_step_cpu_s), which a loaded
machine disturbs much less than wall time.

Thread settings: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS must be 1 before
torch is imported (torch.set_num_threads does not bound OpenBLAS); the script sets them
and re-executes itself when they are not.

Usage: $(perf/peer_env.sh) perf/torch_peer.py --deck inputs/bench.toml --nproc 2 --mode ddp \
           --steps 20 --summary peer.json
"""
import argparse
import json
import math
import os
import sys
import time

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if any(os.environ.get(v) != "1" for v in _THREAD_VARS):
    for v in _THREAD_VARS:
        os.environ[v] = "1"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

try:
    import tomllib  # Python 3.11
except ImportError:  # pragma: no cover
    tomllib = None


# ---- the model (MODEL.md) ---------------------------------------------------------------
def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g


class Layer(nn.Module):
    def __init__(self, H, A, F_):
        super().__init__()
        self.H, self.A, self.D, self.F = H, A, H // A, F_
        self.attn_norm = nn.Parameter(torch.ones(H))
        self.qkv = nn.Parameter(torch.empty(3 * H, H).normal_(0.0, 0.02))
        self.out = nn.Parameter(torch.empty(H, H).normal_(0.0, 0.02))
        self.mlp_norm = nn.Parameter(torch.ones(H))
        self.gate_up = nn.Parameter(torch.empty(2 * F_, H).normal_(0.0, 0.02))
        self.down = nn.Parameter(torch.empty(H, F_).normal_(0.0, 0.02))

    def forward(self, x, mask):
        B, S, H = x.shape
        A, D = self.A, self.D
        n = rmsnorm(x, self.attn_norm)
        qkv = F.linear(n, self.qkv)  # [B, S, 3H]: Q rows [0,H), K [H,2H), V [2H,3H)
        q, k, v = qkv.split(H, dim=-1)
        # head a owns rows [a*D, (a+1)*D) of each block
        q = q.view(B, S, A, D).transpose(1, 2)
        k = k.view(B, S, A, D).transpose(1, 2)
        v = v.view(B, S, A, D).transpose(1, 2)
        o = self.core(q, k, v, mask).transpose(1, 2).reshape(B, S, H)  # concat heads
        x = x + F.linear(o, self.out)
        n = rmsnorm(x, self.mlp_norm)
        g, u = F.linear(n, self.gate_up).split(self.F, dim=-1)
        return x + F.linear(F.silu(g) * u, self.down)

    @staticmethod
    def core(q, k, v, mask):
        """The attention core, [B, A, S, D] each: causal softmax(q kᵀ / √D) v, materialised."""
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + mask
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class Gpt(nn.Module):
    def __init__(self, V, S, H, A, F_, L):
        super().__init__()
        self.embed = nn.Parameter(torch.empty(V, H).normal_(0.0, 0.02))
        self.pos_embed = nn.Parameter(torch.empty(S, H).normal_(0.0, 0.02))
        self.layers = nn.ModuleList([Layer(H, A, F_) for _ in range(L)])
        self.final_norm = nn.Parameter(torch.ones(H))
        self.lm_head = nn.Parameter(torch.empty(V, H).normal_(0.0, 0.02))
        # Additive causal mask as a plain attribute, not a buffer: DDP broadcasts buffers
        # and gloo (torch 1.13) cannot broadcast bool tensors; a float mask also adds directly.
        self.mask = torch.full((S, S), float("-inf")).triu(1)

    def forward(self, tokens_in, tokens_out):
        B, S = tokens_in.shape
        x = self.embed[tokens_in] + self.pos_embed[:S]
        mask = self.mask[:S, :S]
        for layer in self.layers:
            x = layer(x, mask)
        logits = F.linear(rmsnorm(x, self.final_norm), self.lm_head)
        return F.cross_entropy(logits.reshape(B * S, -1), tokens_out.reshape(B * S))


MODES = {"ddp": "DDP eager", "compile": "DDP + torch.compile", "fsdp2": "FSDP2 (fully_shard per block)"}


def param_groups(model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and name not in ("embed", "pos_embed") else no_decay).append(p)
    return [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]


def model_flops_per_step(V, S, H, A, F_, L, tokens):
    """Same count as shardflow (nn::gpt_model_flops): 6 N_mm T + 12 L S H T."""
    n_mm = L * (4 * H * H + 3 * F_ * H) + V * H
    return 6.0 * n_mm * tokens + 12.0 * L * S * H * tokens


def sgemm_gflops(n=512, reps=5):
    a = torch.ones(n, n)
    b = torch.full((n, n), 0.5)
    torch.mm(a, b.t())
    best = 1e30
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b.t())
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


# ---- one rank -----------------------------------------------------------------------------
def worker(rank, args, cfg, corpus_path, port, result_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.nproc)
    V, S, H, A, F_, L = cfg["vocab"], cfg["seq"], cfg["hidden"], cfg["heads"], cfg["ffn"], cfg["layers"]
    B = cfg["global_batch"]
    assert B % args.nproc == 0, f"global_batch {B} is not divisible by {args.nproc} processes"
    local = B // args.nproc
    torch.manual_seed(cfg["seed"])  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    net = Gpt(V, S, H, A, F_, L)
    n_params = sum(p.numel() for p in net.parameters())
    if args.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard
        for layer in net.layers:
            fully_shard(layer)
        fully_shard(net)
        model = net
    else:
        model = DDP(net)
        if args.mode == "compile":
            model = torch.compile(model)
    # built after fully_shard: FSDP2 replaces the parameters by sharded DTensors
    opt = torch.optim.AdamW(param_groups(net), lr=cfg["lr"], betas=(0.9, 0.95), eps=1e-8)
    warmup = max(0, cfg["warmup"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) if warmup > 0 else 1.0)

    data = np.fromfile(corpus_path, dtype=np.uint8)
    assert len(data) > S + 1, f"corpus {corpus_path} has {len(data)} bytes, fewer than seq + 2 = {S + 2}"

    peak = sgemm_gflops()
    steps = []
    t_max = torch.zeros(1, dtype=torch.float64)
    for step in range(1, args.steps + 1):
        # the global batch of this step (the same on every rank), this rank's contiguous slice
        rng = np.random.default_rng([cfg["seed"], step])
        starts = rng.integers(0, len(data) - S - 1, size=B)[rank * local:(rank + 1) * local]
        seqs = np.stack([data[s:s + S + 1] for s in starts]).astype(np.int64)
        x = torch.from_numpy(seqs[:, :S].copy())
        y = torch.from_numpy(seqs[:, 1:].copy())
        dist.barrier()
        c0 = time.process_time()  # CPU time of the whole process (gloo's threads included)
        t0 = time.perf_counter()
        if args.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces / FSDP2 reduce-scatters (averaging) the gradients during backward
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor
            gnorm = gnorm.full_tensor()
        opt.step()
        sched.step()
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        t_max[0] = dt
        dist.all_reduce(t_max, op=dist.ReduceOp.MAX)
        c_max = torch.tensor([cpu], dtype=torch.float64)
        dist.all_reduce(c_max, op=dist.ReduceOp.MAX)
        lsum = loss.detach().clone()
        dist.all_reduce(lsum)
        steps.append({"step": step, "loss": lsum.item() / args.nproc, "step_time_s": t_max.item(), "cpu_s": c_max.item(),
                      "tokens_per_s": B * S / t_max.item(), "grad_norm": gnorm.item()})
        if rank == 0 and not args.quiet:
            print(f"torch step {step}/{args.steps} loss {steps[-1]['loss']:.4f} {steps[-1]['tokens_per_s']:8.0f} tok/s "
                  f"step {t_max.item():.3f}s", flush=True)
    peaks = [torch.zeros(1, dtype=torch.float64) for _ in range(args.nproc)]
    dist.all_gather(peaks, torch.tensor([peak], dtype=torch.float64))
    if rank == 0:
        times = sorted(s["step_time_s"] for s in steps[args.warmup_steps:]) or [steps[-1]["step_time_s"]]
        med = times[len(times) // 2]
        cpus = sorted(s["cpu_s"] for s in steps[args.warmup_steps:])
        flops = model_flops_per_step(V, S, H, A, F_, L, B * S)
        out = {
            "peer": f"pytorch {torch.__version__} {MODES[args.mode]}"
                    f"{', autocast bf16' if args.precision == 'bf16' else ''}, gloo, {args.nproc} processes x 1 thread",
            "mode": args.mode, "precision": args.precision, "torch_version": torch.__version__,
            "world_size": args.nproc, "steps": steps, "warmup_steps": args.warmup_steps,
            "final_loss": steps[-1]["loss"], "median_step_time_s": med, "tokens_per_s": B * S / med,
            "median_step_cpu_s": cpus[len(cpus) // 2],
            "model_flops_per_step": flops,
            "torch_sgemm_gflops_per_rank": min(p.item() for p in peaks),
            "n_params": n_params,
        }
        if args.peak_gflops > 0:
            out["mfu"] = flops / med / (args.peak_gflops * 1e9 * args.nproc)
        with open(result_path, "w") as f:
            json.dump(out, f, indent=2)
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()


def load_deck(path, overrides):
    with open(path, "rb") as f:
        d = tomllib.load(f)
    cfg = dict(d["model"])
    cfg.update({k: d["train"][k] for k in ("global_batch", "lr", "warmup", "seed", "data", "steps")})
    for o in overrides:
        key, _, val = o.partition("=")
        cfg[key.split(".")[-1]] = type(cfg[key.split(".")[-1]])(val)
    corpus = os.path.join(os.path.dirname(os.path.abspath(path)), cfg["data"])
    return cfg, corpus


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deck", required=True, help="shardflow input deck (TOML): sizes, batch, lr, seed, corpus")
    ap.add_argument("--set", nargs="*", default=[], help="override section.key=value (model/train keys)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--mode", choices=sorted(MODES), default="ddp")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: the forward and loss under torch.autocast (cpu, bfloat16)")
    ap.add_argument("--steps", type=int, default=0, help="default: the deck's train.steps")
    ap.add_argument("--warmup-steps", type=int, default=1, help="steps left out of the median")
    ap.add_argument("--peak-gflops", type=float, default=0.0, help="per-rank sgemm rate for MFU")
    ap.add_argument("--summary", required=True)
    ap.add_argument("--port", type=int, default=0, help="rendezvous port (default: a free one)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    cfg, corpus = load_deck(args.deck, args.set)
    if args.steps <= 0:
        args.steps = cfg["steps"]
    if args.steps <= args.warmup_steps:
        ap.error(f"--steps {args.steps} must exceed --warmup-steps {args.warmup_steps}")
    if args.port == 0:
        # a fresh port per run: back-to-back runs on a fixed port can meet the previous
        # run's sockets (seen: gloo aborting with "terminate called without an active exception")
        import socket
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            args.port = so.getsockname()[1]
    if os.path.exists(args.summary):
        os.remove(args.summary)
    try:
        mp.spawn(worker, args=(args, cfg, corpus, args.port, args.summary), nprocs=args.nproc, join=True)
    except mp.ProcessExitedException as e:
        # gloo's teardown now and then aborts ("terminate called without an active
        # exception") after the last step; the measurement is complete once rank 0 wrote it
        if not os.path.exists(args.summary):
            raise
        print(f"torch peer: a worker died after the summary was written ({e}); the results stand", file=sys.stderr)
    with open(args.summary) as f:
        s = json.load(f)
    print(f"torch peer ({s['peer']}): {s['tokens_per_s']:.0f} tokens/s, median step {s['median_step_time_s'] * 1e3:.1f} ms, "
          f"final loss {s['final_loss']:.4f}")


if __name__ == "__main__":
    main()
