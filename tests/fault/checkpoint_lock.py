"""One run per checkpoint directory (issue 15 item 2): a second run on a directory in use is
refused before it reads or writes anything; a killed holder's lock is taken over with a
message; a holder on another host is judged by its heartbeat (alive: refused; silent:
taken over); a run whose lock was taken over stops before it saves; a resume from an older
checkpoint into a directory holding later ones is refused before step 1."""
import json
import os
import threading
import time

from common import args, check, finish, kill_session, latest, run, start, steps, train_cmd, wait_for_line

a = args()
ck = os.path.join(a.work, "ck")
lock = os.path.join(ck, ".lock")
fast = dict(os.environ, SHARDFLOW_LOCK_HEARTBEAT_S="0.2")

# 0. two runs started together on a fresh directory: exactly one trains, 5 times out of 5
for trial in range(5):
    d = os.path.join(a.work, f"together{trial}")
    both = [start(train_cmd(a, 1, "train.steps=6", "checkpoint.every=2", "checkpoint.dir=" + d)) for _ in range(2)]
    res = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in both]
    # the loser is refused by the lock, or, when the machine is so loaded that it started
    # only after the winner had finished, by the committed checkpoints it finds (both say so)
    ok = sorted(r[0] for r in res) == [0, 1] and sum(
        "is in use by process" in r[2] or "continue with --resume latest" in r[2] for r in res) == 1
    check(ok and latest(d) == "step-00000006" and steps(d) == ["step-00000004", "step-00000006"],  # the deck keeps 2
          f"trial {trial + 1}: two runs started together: one trained, one was refused ({[r[0] for r in res]}, "
          f"{steps(d)})")

# 1. a second run on a directory in use, started while the first trains
first = start(train_cmd(a, 2, "train.steps=1000000", "checkpoint.every=5", "checkpoint.keep=3", "checkpoint.dir=" + ck))
try:
    wait_for_line(first, "checkpoint ")  # at least one commit
    before = (latest(ck), steps(ck))
    rc, out, err, secs = run(train_cmd(a, 2, "train.steps=1000000", "checkpoint.every=5", "checkpoint.dir=" + ck,
                                       extra=["--resume", "latest"]))
    check(rc != 0 and "is in use by process" in err and "step 1/" not in out and secs < 10,
          f"a second run on the directory is refused in {secs:.1f} s: {err.strip()[-160:]}")
    check(first.poll() is None, "the first run is still training")
    time.sleep(0.5)
    check(int((latest(ck) or "step-0")[5:]) >= int(before[0][5:]), "the first run's latest never went back")
finally:
    # 2. the holder is killed (kill -9 of every process of the run): its lock stays behind
    kill_session(first)
check(os.path.exists(lock), "a killed run leaves its .lock behind")
held_by = json.load(open(lock))["pid"]
step = int(latest(ck)[5:])
rc, out, err, _ = run(train_cmd(a, 2, f"train.steps={step + 5}", "checkpoint.every=5", "checkpoint.keep=3",
                                "checkpoint.dir=" + ck, extra=["--resume", "latest"]))
check(rc == 0 and "taking over the stale lock of process %d" % held_by in out and f"at step {step}" in out,
      f"the next run takes the stale lock over and resumes at step {step}: "
      f"{[l for l in out.splitlines() if 'lock' in l]} rc {rc} {err.strip()[-200:]}")
check(not os.path.exists(lock), "a run that ends releases its lock")
check(len(steps(ck)) <= 3, f"retention kept checkpoint.keep = 3 ({steps(ck)})")

# 3. a holder on another host: alive while its heartbeat (the file's mtime) moves
record = {"token": "remote-1", "host": "some-other-node", "pid": 4242, "heartbeat_s": 0.3,
          "started": "2026-12-01T00:00:00Z", "slurm_job_id": "77", "slurm_restart_count": 0}
with open(lock, "w") as f:
    json.dump(record, f)
stop = threading.Event()


def beat():
    while not stop.is_set():
        os.utime(lock)
        time.sleep(0.1)


t = threading.Thread(target=beat)
t.start()
step = int(latest(ck)[5:])
rc, out, err, secs = run(train_cmd(a, 2, f"train.steps={step + 2}", "checkpoint.dir=" + ck,
                                   extra=["--resume", "latest"]))
stop.set()
t.join()
check(rc != 0 and "some-other-node" in err and "heartbeat is alive" in err and latest(ck) == f"step-{step:08d}",
      f"a live remote holder is refused after {secs:.1f} s: {err.strip()[-150:]}")
rc, out, err, _ = run(train_cmd(a, 2, f"train.steps={step + 2}", "checkpoint.dir=" + ck,
                                extra=["--resume", "latest"]))
check(rc == 0 and "taking over the stale lock of process 4242 on some-other-node" in out and "no heartbeat" in out,
      f"a silent remote holder is taken over: {[l for l in out.splitlines() if 'lock' in l]} {err.strip()[-150:]}")

# 4. the same Slurm job at an earlier restart: taken over at once (Slurm ended that run)
record.update(token="requeued", host="some-other-node", slurm_job_id="555", slurm_restart_count=0, heartbeat_s=3600)
with open(lock, "w") as f:
    json.dump(record, f)
step = int(latest(ck)[5:])
env = dict(os.environ, SLURM_JOB_ID="555", SLURM_RESTART_COUNT="1")
rc, out, err, secs = run(train_cmd(a, 2, f"train.steps={step + 2}", "checkpoint.dir=" + ck,
                                   extra=["--resume", "latest"]), env=env)
check(rc == 0 and "Slurm requeued job 555" in out and secs < 30,
      f"a requeued job takes its earlier run's lock over at once ({secs:.1f} s) {err.strip()[-150:]}")

# 5. a run whose lock another run took over stops before its next save (the first save is
#    400 steps away, so that the takeover below lands before it even on a fast machine:
#    with 40 a clean-clone CI run once saved first, legitimately, and failed the check)
step = int(latest(ck)[5:])
p = start(train_cmd(a, 2, "train.steps=1000000", "checkpoint.every=400", "checkpoint.dir=" + ck,
                    extra=["--resume", "latest"]), env=fast)
try:
    wait_for_line(p, "loss")
    other = dict(record, token="thief", host="another-node")
    with open(lock + ".new", "w") as f:
        json.dump(other, f)
    os.replace(lock + ".new", lock)  # what a takeover does
    out, err = p.communicate(timeout=120)
finally:
    kill_session(p)
check(p.returncode not in (0, 99) and "was taken over by process 4242 on another-node" in err
      and latest(ck) == f"step-{step:08d}",
      f"the run stops without saving once its lock is taken (rc {p.returncode}): {err.strip()[-200:]}")
os.remove(lock)

# 6. resuming an older checkpoint into the directory that holds later ones
older = os.path.join(ck, steps(ck)[0])
rc, out, err, secs = run(train_cmd(a, 2, "train.steps=1000000", "checkpoint.dir=" + ck, extra=["--resume", older]))
check(rc != 0 and "saving there would mix two histories" in err and "step 1/" not in out and "loss" not in out,
      f"an older resume into a directory with later checkpoints is refused before a step: {err.strip()[-120:]}")
finish()
