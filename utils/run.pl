#!/usr/bin/env python3
"""Local job runner with Kaldi's run.pl interface (implemented in Python, stdlib only).

Usage: run.pl [options] [JOB=1:N] log/x.JOB.log command args...
  --max_jobs_run K   run at most K jobs at once (default: all of them)
  --num_threads N    exported to the jobs as OMP_NUM_THREADS / MKL_NUM_THREADS
  --mem, --gpu, --time and other --opt value pairs are accepted and ignored (so that recipes can
  switch between run.pl and slurm.pl in cmd.sh without changing their calls).
Each log gets a header (command, start time) and a footer with the exit code and elapsed time.
Exits 1 if any job failed, naming the failed jobs and printing the end of their logs.
"""
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import jobrunner  # noqa: E402

PROG = os.path.basename(sys.argv[0])


class LocalRunner:
    def __init__(self, spec, tee=False):
        self.spec = spec
        self.tee = tee  # stdout.pl: also copy each job's output to our stdout
        self.procs = set()
        self.lock = threading.Lock()
        self.stopping = False
        self.env = dict(os.environ)
        threads = spec.options.get("num_threads")
        if threads is not None:
            # Parallel jobs each defaulting to all cores oversubscribe the machine.
            self.env["OMP_NUM_THREADS"] = threads
            self.env["MKL_NUM_THREADS"] = threads

    def run_one(self, job_id):
        spec = self.spec
        log = spec.log_for(job_id)
        cmd = spec.command_for(job_id)
        os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
        start = time.time()
        with open(log, "w") as f:
            f.write(f"# {cmd}\n# Started at {jobrunner.now()}\n#\n")
            f.flush()
            with self.lock:
                if self.stopping:
                    return "not started (runner interrupted)"
                proc = subprocess.Popen(["bash", "-c", cmd], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE if self.tee else f,
                                        stderr=subprocess.STDOUT, env=self.env)
                self.procs.add(proc)
            if self.tee:
                for raw in proc.stdout:
                    f.write(raw.decode("utf-8", "replace"))
                    f.flush()
                    sys.stdout.buffer.write(raw)
                    sys.stdout.flush()
            code = proc.wait()
            with self.lock:
                self.procs.discard(proc)
            elapsed = time.time() - start
            f.write(f"# Accounting: time={elapsed:.0f} threads={spec.options.get('num_threads', 1)}\n")
            f.write(f"# Ended (code {code}) at {jobrunner.now()}, elapsed time {elapsed:.0f} seconds\n")
        return code

    def stop(self, signum, _frame):
        with self.lock:
            self.stopping = True
            for p in self.procs:
                p.send_signal(signum)
        sys.stderr.write(f"{PROG}: got signal {signum}, stopping the jobs\n")

    def run(self):
        spec = self.spec
        ids = spec.job_ids()
        max_run = jobrunner.int_option(spec, "max_jobs_run", PROG, len(ids))
        if max_run < 1:
            max_run = len(ids)
        results = {}
        pending = list(ids)
        active = {}
        done_cv = threading.Condition()

        def worker(job_id):
            try:
                code = self.run_one(job_id)
            except Exception as e:  # e.g. unwritable log dir: count as a failure, say why
                code = f"error: {e}"
            with done_cv:
                results[job_id] = code
                del active[job_id]
                done_cv.notify()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        with done_cv:
            while pending or active:
                while pending and len(active) < max_run and not self.stopping:
                    job_id = pending.pop(0)
                    t = threading.Thread(target=worker, args=(job_id,), daemon=True)
                    active[job_id] = t
                    t.start()
                if self.stopping:
                    for j in pending:
                        results[j] = "not started (runner interrupted)"
                    pending = []
                if active:
                    done_cv.wait(timeout=1.0)
        failed = [(j, results[j]) for j in ids if results[j] != 0]
        if failed:
            jobrunner.report_failures(PROG, spec, failed, len(ids))
            return 1
        return 0


def main(argv, tee=False):
    try:
        spec = jobrunner.parse_args(argv, PROG, __doc__)
    except jobrunner.UsageError as e:
        msg = str(e)
        is_help = msg == __doc__
        (sys.stdout if is_help else sys.stderr).write(msg.rstrip() + "\n")
        return 0 if is_help else 1
    return LocalRunner(spec, tee=tee).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
