"""Saves that fill the disk (issue 15 item 6): on a small tmpfs, checkpoint.every=2, sync and
async, the run fails with one clear message naming the file and "No space left on device",
never a crash at exit; `latest` still names the last committed checkpoint, which verifies,
and once there is room the run resumes from it.

Before the fix, 3 of 20, 2 of 24 and 1 of 24 such runs died with SIGSEGV in MPI_Finalize
(HDF5's H5F_term_package closing a file ID whose H5Fclose had failed on the full disk).
Needs root (mount); skipped (77) otherwise."""
import os
import subprocess
import sys

from common import args, check, finish, latest, run, steps, train_cmd

a = args()
mnt = os.path.join(a.work, "tmpfs")
os.makedirs(mnt)
if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=14800k", "tmpfs", mnt]).returncode != 0:
    print("skipped: mounting a tmpfs needs root")
    sys.exit(77)
try:
    # 14800k: the second save is refused before HDF5 writes (not enough room for the shard);
    # 18900k: each rank's check passes, then the two shards together fill the disk mid-write
    for size in ("14800k", "18900k"):
        subprocess.run(["mount", "-o", "remount,size=" + size, mnt], check=True)
        for mode in ("false", "true"):
            for trial in range(4):
                for e in os.listdir(mnt):
                    subprocess.run(["rm", "-rf", os.path.join(mnt, e)], check=True)
                ck = os.path.join(mnt, "ck")
                # the quickstart model (layers 4): a checkpoint is ~10.4 MB on disk
                rc, out, err, _ = run([a.mpiexec, "-n", "2", a.app, "train", a.deck, "--set", "train.steps=6",
                                       "checkpoint.every=2", "checkpoint.async=" + mode, "checkpoint.dir=" + ck,
                                       "--quiet"])
                what = f"{size} async={mode} trial {trial + 1}"
                crashed = rc < 0 or rc > 128 or "signal" in (out + err).lower() or "BAD TERMINATION" in out + err
                check(rc == 1 and not crashed, f"{what}: exit {rc}, no crash")
                check("No space left on device" in err and "shard-" in err,
                      f"{what}: the message names the file and the cause: {err.strip()[:160]}")
                check(latest(ck) == "step-00000002" and steps(ck) == ["step-00000002"],
                      f"{what}: latest still names the committed step 2 ({latest(ck)}, {steps(ck)})")
        vrc, vout, verr, _ = run([a.mpiexec, "-n", "2", a.app, "ckpt", "verify", ck])
        check(vrc == 0 and "OK" in vout, f"{size}: the last committed checkpoint verifies: {vout.strip()[-100:]}")
    subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
    rc, out, err, _ = run([a.mpiexec, "-n", "2", a.app, "train", a.deck, "--set", "train.steps=6",
                           "checkpoint.every=2", "checkpoint.dir=" + ck, "--resume", "latest"])
    check(rc == 0 and "at step 2" in out and latest(ck) == "step-00000006",
          f"with room again the run resumes at step 2 and finishes (rc {rc}) {err.strip()[-150:]}")
finally:
    subprocess.run(["umount", "-l", mnt])
finish()
