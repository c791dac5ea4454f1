"""Shared helpers of the fault tests (issue 15): run `shardflow train` as a user would,
under mpiexec, and check what it did. Every script takes --app, --mpiexec, --deck, --work."""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time


def args():
    p = argparse.ArgumentParser()
    for a in ("app", "mpiexec", "deck", "work", "source"):
        p.add_argument("--" + a, required=True)
    a = p.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    return a


FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def finish():
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed:\n  " + "\n  ".join(FAILURES), flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)


def train_cmd(a, np, *sets, extra=()):
    cmd = [a.mpiexec, "-n", str(np), a.app, "train", a.deck, "--set", "model.layers=1", "mesh.data=%d" % np]
    cmd += list(sets)
    return cmd + list(extra)


def run(cmd, timeout=120, env=None):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr, time.time() - t0


def start(cmd, env=None):
    """Starts cmd in its own session (so that a kill reaches every process it started)."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def wait_for_line(p, pattern, timeout=60):
    """Reads p's stdout until a line contains pattern; returns the lines read."""
    lines = []
    t0 = time.time()
    while time.time() - t0 < timeout:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        if pattern in line:
            return lines
    raise RuntimeError(f"no line with {pattern!r} within {timeout} s:\n" + "".join(lines))


def kill_session(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def latest(ckdir):
    try:
        with open(os.path.join(ckdir, "latest")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def steps(ckdir):
    return sorted(n for n in os.listdir(ckdir) if n.startswith("step-")) if os.path.isdir(ckdir) else []
