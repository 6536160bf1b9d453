"""Shared parts of the Kaldi-style job runners (run.pl, stdout.pl, slurm.pl); stdlib only.

Interface (same as Kaldi's run.pl/queue.pl/slurm.pl):

    CMD [--num_threads N] [--mem M] [--gpu G] [--max_jobs_run K] [--time T] \\
        [JOB=1:N] log/x.JOB.log command args...

The job variable (any NAME=a:b, usually JOB) is replaced by the job index in the log path and
in the command. Option spellings with '-' or '_' and '--opt=value' are accepted.
"""
import os
import re
import shlex
import sys
import time

_ARRAY_RE = re.compile(r"^([A-Za-z_][A-Za-z_0-9]*)=(\d+):(\d+)$")
_SINGLE_RE = re.compile(r"^([A-Za-z_][A-Za-z_0-9]*)=(\d+)$")


class UsageError(Exception):
    pass


class JobSpec:
    """What to run: options, the job range, the log file pattern and the shell command."""

    def __init__(self, options, jobvar, first, last, logfile, command):
        self.options = options  # dict name -> value (names normalised to underscores)
        self.jobvar = jobvar  # None for the no-array form
        self.first = first
        self.last = last
        self.logfile = logfile
        self.command = command

    @property
    def array(self):
        return self.jobvar is not None

    def job_ids(self):
        return list(range(self.first, self.last + 1))

    def substitute(self, text, job_id):
        if self.jobvar is None:
            return text
        return text.replace(self.jobvar, str(job_id))

    def log_for(self, job_id):
        return self.substitute(self.logfile, job_id)

    def command_for(self, job_id):
        return self.substitute(self.command, job_id)


def join_command(words):
    """Kaldi's rule: words without whitespace go to bash as they are (so '|' or '>' given as
    separate words still act as shell syntax); words with whitespace are quoted. A command given
    as one single word is a complete shell command line and is used verbatim."""
    if len(words) == 1:
        return words[0]
    out = []
    for w in words:
        if w and not re.search(r"\s", w):
            out.append(w)
        else:
            out.append(shlex.quote(w))
    return " ".join(out)


def parse_args(argv, prog, usage):
    options = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        arg = argv[i]
        if arg in ("--help", "-h"):
            raise UsageError(usage)
        if "=" in arg:
            name, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise UsageError(f"{prog}: option {arg} needs a value")
            name, value = arg[2:], argv[i + 1]
            i += 2
        options[name.replace("-", "_")] = value
    if i < len(argv) and argv[i] in ("-h", "--help"):
        raise UsageError(usage)
    jobvar, first, last = None, 1, 1
    if i < len(argv):
        m = _ARRAY_RE.match(argv[i])
        m1 = _SINGLE_RE.match(argv[i])
        if m:
            jobvar, first, last = m.group(1), int(m.group(2)), int(m.group(3))
            i += 1
            if last < first:
                raise UsageError(f"{prog}: empty job range {argv[i - 1]}")
        elif m1:  # JOB=3: a single job with that index
            jobvar, first, last = m1.group(1), int(m1.group(2)), int(m1.group(2))
            i += 1
    if len(argv) - i < 2:
        raise UsageError(f"{prog}: need a log file and a command\n\n{usage}")
    logfile = argv[i]
    command = join_command(argv[i + 1:])
    if jobvar is not None and jobvar not in logfile and last > first:
        raise UsageError(f"{prog}: the log file name '{logfile}' must contain {jobvar} "
                         f"when running jobs {first}..{last} (else they overwrite each other)")
    return JobSpec(options, jobvar, first, last, logfile, command)


def int_option(spec, name, prog, default):
    value = spec.options.get(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{prog}: --{name} expects an integer, got '{value}'")
    return n


def tail(path, n=10):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return lines[-n:]
    except OSError as e:
        return [f"(cannot read log: {e})"]


def report_failures(prog, spec, failed, total, stream=sys.stderr):
    """failed: list of (job_id, exit_code_or_reason). Prints which ones failed and their logs."""
    ids = ",".join(str(j) for j, _ in failed)
    if spec.array:
        stream.write(f"{prog}: {len(failed)} / {total} failed (jobs {spec.jobvar}={ids}), "
                     f"log is in {spec.logfile.replace(spec.jobvar, '*')}\n")
    else:
        stream.write(f"{prog}: job failed, log is in {spec.logfile}\n")
    for job_id, code in failed[:3]:
        log = spec.log_for(job_id)
        stream.write(f"{prog}: job {job_id} exited with {code}; last lines of {log}:\n")
        for line in tail(log):
            stream.write(f"    {line}\n")
    if len(failed) > 3:
        stream.write(f"{prog}: ... and {len(failed) - 3} more failed jobs\n")
    stream.flush()


def now():
    return time.strftime("%a %b %d %H:%M:%S %Z %Y")
