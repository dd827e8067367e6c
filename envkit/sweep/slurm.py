"""The Slurm backend's core: submit a job array, follow its tasks, wait for them, cancel them.

Only Slurm's command-line tools are used (``sbatch``, ``squeue``, ``scancel``, ``sinfo``), so this works wherever a
user can submit jobs, with no library or REST endpoint. Every call has a time limit and every failure is one
:class:`~envkit.errors.SlurmError` line: Slurm not installed or its controller not answering says to check ``sinfo``;
a job ``sbatch`` refuses carries sbatch's own message.

One array job per sweep: ``sbatch --array=0-(n-1)%P --parsable``. Each task runs the command for its
``SLURM_ARRAY_TASK_ID`` from a generated bash script (kept in the output folder, so what ran is on record), in an
environment that carries ``SLURM_JOB_ID``, ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID`` and ``SLURMD_NODENAME``
(:func:`slurm_context` reads them for the run's record). The script writes two markers per task into the output
folder: ``task-I.start`` (node and job ids) when it starts, ``task-I.exit`` (the command's exit code) when it
ends, and ``task-I.signal`` when SIGTERM stopped it (scancel, a time limit); each is written to a temp file and
renamed.

Where a task's state comes from. Without an accounting database (``AccountingStorageType=accounting_storage/none``,
as on a one-node test cluster, and on some real ones) ``sacct`` answers "accounting storage is disabled". So
:func:`status` asks ``squeue --states=all``, which lists finished tasks too for ``MinJobAge`` seconds after they end
(default 300), and reads the exit markers; once Slurm has forgotten the job, the markers alone decide (a task with
neither is ``UNKNOWN``). The output folder must be on a filesystem the nodes share with the submitting host, as the
run store already must be.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from envkit.errors import SlurmError

CALL_TIMEOUT_S = 60.0
POLL_FAILURES = 5  # wait() gives up after this many failed polls in a row
# Slurm's job states after which a task does not run again.
FINISHED_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "REVOKED", "SPECIAL_EXIT", "UNKNOWN",
})
CONTEXT_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME")
_HINT = "check the cluster with `sinfo` (it should list an idle node) and `squeue`; Slurm's logs say more"
_SQUEUE_FORMAT = "%F|%K|%A|%T|%N|%r|%e"
# Slurm says CANCELLED as soon as scancel is called, while the task's processes may still be ending (they get
# SIGTERM, then SIGKILL after KillWait, 30 s by default): only after this long, or once the task's exit marker
# exists, are they surely gone.
KILL_GRACE_S = 90.0


@dataclass(frozen=True)
class SlurmOptions:
    """What the array job asks of Slurm; ``extra_args`` go to sbatch as given (e.g. ``["--mem=8G"]``)."""

    partition: str | None = None
    gres: str | None = None  # e.g. "gpu:1"
    time: str | None = None  # sbatch's --time, e.g. "01:00:00"
    parallel: int | None = None  # at most this many tasks at once (the %P of --array)
    job_name: str = "envkit"
    workdir: Path | None = None  # the tasks' working folder (sbatch --chdir); default: the submitting one
    cpus_per_task: int | None = None  # what one task needs (a run's --threads), so Slurm packs tasks onto cores
    mem: str | None = None  # sbatch's --mem for one task (a run's --memory)
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArrayJob:
    """A submitted array: Slurm's job id, its size, and the folder holding its script, logs and markers."""

    job_id: str
    n_tasks: int
    output_dir: Path

    def log_path(self, index: int) -> Path:
        """The task's stdout and stderr, as Slurm writes them."""
        return self.output_dir / f"task-{index}.log"


@dataclass(frozen=True)
class TaskStatus:
    """One array task: Slurm's state name (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...) and what we know."""

    index: int
    state: str
    exit_code: int | None = None  # the command's exit code, from the task's own marker
    node: str | None = None
    slurm_job_id: str | None = None  # the task's own job id (SLURM_JOB_ID in the task)
    reason: str | None = None  # why it pends or failed, as squeue says it
    source: str = "squeue"  # "squeue" or "marker": where the state was read
    extra: Mapping[str, str] = field(default_factory=dict)
    ended: float | None = None  # when Slurm ended it (squeue's end time, seconds since the epoch)

    @property
    def finished(self) -> bool:
        """Whether Slurm counts the task as over (successfully or not); its processes may still be ending."""
        return self.state in FINISHED_STATES

    def processes_gone(self, now: float | None = None) -> bool:
        """Whether the task's processes have surely ended: its exit marker is written (the script writes it once
        the command has exited), Slurm has forgotten the job (MinJobAge after its end), or it ended more than
        :data:`KILL_GRACE_S` ago (SIGKILL came long since)."""
        if not self.finished:
            return False
        if self.exit_code is not None or self.source == "marker":
            return True
        return self.ended is not None and (now if now is not None else time.time()) - self.ended > KILL_GRACE_S


def render_script(tasks: Sequence[str | Sequence[str]], output_dir: Path) -> str:
    """The batch script: runs task ``SLURM_ARRAY_TASK_ID``'s command and writes its start and exit markers.

    Args:
        tasks: per task, an argv list (quoted and exec'd) or a shell command line (used as written, in a subshell).
        output_dir: where the markers go; it must be shared with the submitting host.
    """
    out = shlex.quote(str(output_dir))
    cases = "\n".join(
        f"  {i}) {cmd if isinstance(cmd, str) else 'exec ' + shlex.join(cmd)} ;;" for i, cmd in enumerate(tasks)
    )
    # The command runs in the background and the shell waits, so that scancel's SIGTERM reaches the trap at once
    # (bash defers traps until a foreground child ends) and is passed on to the command. The trap waits until the
    # command is really gone (a second SIGTERM, which Slurm sends to every process of the job, cuts a `wait`
    # short): the exit marker must mean that nothing of the task still writes. An argv command is exec'd, so that
    # the background job's PID is the command's own and the signal reaches it, not a subshell around it.
    return f"""#!/bin/bash
# envkit array job: {len(tasks)} task(s); task I runs the command of case I.
set -u
out={out}
i="${{SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task}}"
mark() {{ printf '%s\\n' "$2" > "$out/task-$i.$1.tmp.$$" && mv -f "$out/task-$i.$1.tmp.$$" "$out/task-$i.$1"; }}
mark start "{{\\"job_id\\": \\"${{SLURM_JOB_ID:-}}\\", \\"array_job_id\\": \\"${{SLURM_ARRAY_JOB_ID:-}}\\", \
\\"node\\": \\"${{SLURMD_NODENAME:-}}\\", \\"started\\": $(date +%s.%N)}}"
run_task() {{
case "$i" in
{cases}
  *) echo "envkit: no command for array task $i" >&2; return 2 ;;
esac
}}
run_task & child=$!
trap 'kill -TERM "$child" 2>/dev/null; while kill -0 "$child" 2>/dev/null; do wait "$child"; done; \
mark signal TERM; mark exit 143; exit 143' TERM INT
wait "$child"; code=$?
mark exit "$code"
exit "$code"
"""


def submit_array(
    tasks: Sequence[str | Sequence[str]], output_dir: Path, options: SlurmOptions | None = None,
    environ: Mapping[str, str] | None = None,
) -> ArrayJob:
    """Submit one array job of ``len(tasks)`` tasks; task I runs ``tasks[I]``.

    Args:
        tasks: per task, an argv list or a shell command line (a list of one gives a single run).
        output_dir: a new or empty folder, shared with the nodes: the script, each task's log and markers.
        options: partition, gres, time, parallelism, job name, working folder, extra sbatch arguments.
        environ: sbatch's environment, which the tasks inherit (sbatch's default ``--export=ALL``); default: ours.

    Returns:
        The array job, with Slurm's job id.

    Raises:
        SlurmError: no tasks, Slurm not reachable, or sbatch refused the job (with sbatch's message).
    """
    options = options or SlurmOptions()
    if not tasks:
        raise SlurmError("no tasks to submit", hint="give at least one command")
    if options.parallel is not None and options.parallel < 1:
        raise SlurmError(f"parallelism {options.parallel} is not a positive number", hint="e.g. --parallel 4")
    output_dir = Path(output_dir).resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        script = output_dir / "array.sh"
        script.write_text(render_script(tasks, output_dir))
    except OSError as exc:
        raise SlurmError(f"cannot write the array script in {output_dir}: {exc.strerror or exc}") from exc
    array = f"0-{len(tasks) - 1}" + (f"%{options.parallel}" if options.parallel else "")
    # What envkit derives from the run comes first, so that the user's own sbatch arguments override it; the
    # options the user named (--partition, --gres, --time) come after those.
    args = ["sbatch"]
    for flag, value in (("--cpus-per-task", options.cpus_per_task), ("--mem", options.mem)):
        if value is not None:
            args.append(f"{flag}={value}")
    args += options.extra_args
    for flag, value in (("--partition", options.partition), ("--gres", options.gres), ("--time", options.time),
                        ("--chdir", options.workdir)):
        if value is not None:
            args.append(f"{flag}={value}")
    # envkit's own options last: they decide the array, the parsable answer and where logs go.
    args += [f"--job-name={options.job_name}", f"--array={array}", "--parsable",
             f"--output={output_dir}/task-%a.log", str(script)]
    answer = _call(args, "sbatch refused the job", environ)
    job_id = answer.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {answer.strip()!r}, not a job id", hint=_HINT)
    return ArrayJob(job_id, len(tasks), output_dir)


def status(job: ArrayJob) -> list[TaskStatus]:
    """The state of every task of ``job``, in task order: Slurm's view while it has one, else the tasks' markers."""
    seen: dict[int, TaskStatus] = {}
    for line in _squeue(job.job_id).splitlines():
        parts = line.strip().split("|")
        if len(parts) != 7 or parts[0] != job.job_id or not parts[1].isdigit():
            continue
        index, state = int(parts[1]), parts[3].split()[0].rstrip("+")
        seen[index] = TaskStatus(index, state, node=parts[4] or None, slurm_job_id=parts[2],
                                 reason=None if parts[5] in ("", "None") else parts[5], ended=_epoch(parts[6]))
    return [_with_marker(job, i, seen.get(i)) for i in range(job.n_tasks)]


def _with_marker(job: ArrayJob, index: int, task: TaskStatus | None) -> TaskStatus:
    exit_code = _read_exit(job.output_dir / f"task-{index}.exit")
    start = _read_start(job.output_dir / f"task-{index}.start")
    if task is not None:
        node = task.node or start.get("node")
        return TaskStatus(index, task.state, exit_code, node, task.slurm_job_id, task.reason, "squeue", start,
                          task.ended)
    # Slurm no longer lists it (MinJobAge passed): the markers decide. A task stopped by SIGTERM (scancel, or its
    # time limit) left a signal marker beside its exit code.
    if (job.output_dir / f"task-{index}.signal").exists():
        state = "CANCELLED"
    elif exit_code is not None:
        state = "COMPLETED" if exit_code == 0 else "FAILED"
    else:
        state = "UNKNOWN"  # never started, or killed before it could write its marker
    return TaskStatus(index, state, exit_code, start.get("node"), start.get("job_id"), None, "marker", start)


def wait(job: ArrayJob, on_progress: Callable[[list[TaskStatus]], None] | None = None, poll: float = 2.0,
         timeout: float | None = None, cancel_on_interrupt: bool = True) -> list[TaskStatus]:
    """Poll until every task is finished; return their states.

    Args:
        job: the array job.
        on_progress: called with all task states whenever one of them changes (and once at the start).
        poll: seconds between polls.
        timeout: give up after this many seconds (None: wait as long as the job runs).
        cancel_on_interrupt: on Ctrl-C, cancel the array (scancel) before passing the interrupt on.

    Raises:
        SlurmError: the timeout passed (the job is left running; the message says how to follow or cancel it), or
            Slurm did not answer :data:`POLL_FAILURES` polls in a row.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last: list[tuple[str, int | None]] | None = None
    failures = 0
    try:
        while True:
            try:
                tasks = status(job)
                failures = 0
            except SlurmError:
                # A controller busy or restarting for a moment must not end a wait of hours; a lasting outage does.
                failures += 1
                if failures >= POLL_FAILURES:
                    raise
                time.sleep(poll)
                continue
            key = [(t.state, t.exit_code) for t in tasks]
            if key != last and on_progress is not None:
                on_progress(tasks)
            last = key
            if all(t.finished for t in tasks):
                return tasks
            if deadline is not None and time.monotonic() >= deadline:
                raise SlurmError(f"array job {job.job_id} is not finished after {timeout:g} s",
                                 hint=f"follow it with `squeue -r -j {job.job_id}`; "
                                      f"cancel it with `scancel {job.job_id}`")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            cancel(job.job_id)
        raise


def cancel(job_id: str) -> None:
    """Cancel every task of the array (``scancel``); a job that already ended is not an error."""
    if not str(job_id).isdigit():
        raise SlurmError(f"{job_id!r} is not a Slurm job id", hint="job ids are numbers, as sbatch printed them")
    _call(["scancel", str(job_id)], "scancel failed")


def counts(tasks: Sequence[TaskStatus]) -> dict[str, int]:
    """How many tasks are in each state, e.g. ``{"COMPLETED": 3, "RUNNING": 1}`` (for a progress line)."""
    result: dict[str, int] = {}
    for t in tasks:
        result[t.state] = result.get(t.state, 0) + 1
    return result


def idle_nodes() -> list[str]:
    """The names of the cluster's idle (or partly used) nodes, from ``sinfo``.

    Raises:
        SlurmError: Slurm's tools are missing or the controller does not answer.
    """
    out = _call(["sinfo", "-h", "-N", "-o", "%N|%T"], "sinfo failed")
    nodes = []
    for line in out.splitlines():
        name, _, state = line.strip().partition("|")
        if state.rstrip("*~#!%$@^-") in ("idle", "mixed"):
            nodes.append(name)
    return sorted(set(nodes))


def slurm_context(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The Slurm ids a run records, from the task's environment; None outside a Slurm job."""
    env = os.environ if environ is None else environ
    found = {name: env[name] for name in CONTEXT_VARIABLES if env.get(name)}
    return found or None


def _squeue(job_id: str) -> str:
    try:
        return _call(["squeue", "-h", "-r", "--states=all", "-j", job_id, "-o", _SQUEUE_FORMAT], "squeue failed")
    except SlurmError as exc:
        # Slurm has forgotten the job (MinJobAge passed): not an error, the markers take over.
        if "Invalid job id" in exc.message:
            return ""
        raise


def _call(args: list[str], failure: str, environ: Mapping[str, str] | None = None) -> str:
    """Run one Slurm tool; its stdout, or one SlurmError line (with the tool's own message)."""
    if shutil.which(args[0]) is None:
        raise SlurmError(f"Slurm's `{args[0]}` is not installed here",
                         hint="install Slurm's client tools (Debian: slurm-client), "
                              "then check the cluster with `sinfo`")
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=CALL_TIMEOUT_S, stdin=subprocess.DEVNULL,
                              env=None if environ is None else dict(environ), check=False)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"`{args[0]}` gave no answer in {CALL_TIMEOUT_S:g} s", hint=_HINT) from exc
    except OSError as exc:
        raise SlurmError(f"cannot run `{args[0]}`: {exc.strerror or exc}", hint=_HINT) from exc
    if done.returncode != 0:
        message = _message(done.stderr or done.stdout) or f"exit code {done.returncode}"
        if any(s in message for s in ("Unable to contact slurm controller", "Connection refused", "Zero Bytes")):
            raise SlurmError(f"Slurm's controller is not reachable: {message}", hint=_HINT)
        raise SlurmError(f"{failure}: {message}", hint=_HINT)
    return done.stdout


def _message(text: str) -> str:
    """The most telling line of a Slurm tool's error output, without the ``sbatch: error:`` prefix."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    # sbatch says "invalid partition specified: x" then "Batch job submission failed: ...": the last line is the
    # verdict, the earlier ones the detail; keep both, prefixes removed.
    cleaned = [line.split("error:", 1)[-1].strip() for line in lines[-2:]]
    return "; ".join(dict.fromkeys(cleaned))


def _epoch(text: str) -> float | None:
    """squeue's end time (``2026-11-30T22:13:00``, local time) as seconds since the epoch; None when unknown."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def _read_exit(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_start(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
