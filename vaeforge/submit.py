"""``python -m vaeforge.submit slurm=PROFILE recipe=NAME [slurm.key=value ...] [sweep=GRID] [then=TASK] [...]``

One SLURM job (through submitit) that trains on every node, checkpoints and requeues itself on preemption or
time-out, and resumes where it stopped. Every SLURM task is one training process: rank ``SLURM_PROCID``, local
rank ``SLURM_LOCALID``, world size nodes x tasks per node, rendezvous on the job's first node (or the profile's
``master_addr``) at a port derived from the job id. All ranks use the same run folder, resolved once here; the
SLURM logs go to ``<run_dir>/slurm/``.

Preemption: SLURM signals USR2 (``signal_delay_s`` before the time limit, or ``scancel --signal=USR2``); task 0's
submitit handler calls :meth:`TrainJob.checkpoint`, which sends SIGTERM to its training process (the engine ends
the step, all ranks agree to stop and write a checkpoint) and returns the same job, which submitit requeues. The
job always trains with ``resume=true``, so a requeue for any other reason also continues from the last
checkpoint. Training processes ignore USR2 themselves. Submitit pickles the job into the run folder and the job
unpickles it: submit only to run folders you control.

``sweep=key=[v1,v2],key2=[...]``: every point of the grid is validated as a training config first, then all are
submitted as ONE SLURM array, each array task a job as above with its own run folder under ``run_dir``
(:mod:`vaeforge.runs.sweep` names them and writes ``sweep.json``), so each point is requeued and resumed on its
own. ``then=TASK`` (``then.<key>=value``: its options): after training, each job's first task runs
``vaeforge run task=TASK`` on its run (``then=evaluate`` gives ``vaeforge leaderboard`` its numbers).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from .cli.args import parse_overrides
from .cli.logs import entry_point
from .cli.options import help_text, read_args
from .config import validate_options
from .config.fields import at_least
from .config.shipped import named_files, shipped_dir
from .config.yamlfile import read_yaml
from .errors import ConfigError, VaeforgeError, unknown_choice
from .runs.folder import latest_state, refuse_overwrite
from .runs.sweep import Point, expand, write_index

log = logging.getLogger("vaeforge.submit")  # by name: under vaeforge's also when run as __main__ (python -m)

ABOUT = ("Train on a SLURM cluster: one job of nodes x processes that checkpoints and requeues itself on preemption; "
         "with sweep=, one such job per point of a grid, as one SLURM array.")
USAGE = ("vaeforge submit slurm=PROFILE recipe=NAME [slurm.key=value ...] [sweep=GRID] "
         "[then=TASK [then.key=value ...]] [training key=value ...] [--dry-run]")
DRY_RUN = "--dry-run"
LOG_DIR = "slurm"
OWN_KEYS = ("slurm", "sweep", "then")  # first dotted part of the arguments that are not training options


@dataclass
class SubmitOptions:
    """What runs, besides the cluster (``slurm.``) and the training options."""

    sweep: Optional[str] = None  # a grid key=[v1,v2],key2=[v3,v4] (YAML values): a run per point under run_dir, one SLURM array
    then: Optional[str] = None  # a task each job runs on its run after training (evaluate: numbers for vaeforge leaderboard); its options: then.<key>=value


@dataclass
class SlurmConfig:
    """A cluster profile (``slurm/<name>.yaml``) with ``slurm.<key>=value`` overrides on top."""

    partition: Optional[str] = None  # the partition (queue) to run in; None: the cluster's default
    account: Optional[str] = None  # the account charged
    constraint: Optional[str] = None  # node features required (sbatch --constraint)
    qos: Optional[str] = None  # quality of service
    nodes: int = at_least(1, 1)  # nodes of the job
    gpus_per_node: int = at_least(0, 0)  # GPUs per node
    tasks_per_node: int = at_least(0, 0)  # training processes per node; 0: one per GPU (one without GPUs)
    cpus_per_task: int = at_least(1, 4)  # CPU cores per training process
    mem_gb: Optional[int] = at_least(1, None)  # per node; None: the partition's default
    time_min: int = at_least(1, 60)  # the job's time limit in minutes
    signal_delay_s: int = at_least(0, 120)  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = at_least(0, 3)  # time-outs survived by requeueing (preemptions do not count)
    deepspeed: Optional[str] = None  # train under DeepSpeed: a config of recipes/deepspeed (zero2, zero3) or a path
    master_addr: Optional[str] = None  # rendezvous address; None: the job's first node
    setup: List[str] = field(default_factory=list)  # shell lines run before training (modules, venv, exports)
    slurm_conf: Optional[str] = None  # SLURM_CONF for sbatch/scontrol when the environment has none
    job_name: str = "vaeforge"  # the job's name in squeue
    array_parallelism: int = at_least(1, 256)  # sweep points (array tasks) running at once

    @property
    def processes_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


def available_profiles() -> dict[str, Path]:
    """Profile name -> file: ./slurm, then the profiles shipped with vaeforge (first match wins)."""
    return named_files("slurm", "vaeforge.slurm")


def read_profile(name: str) -> dict[str, Any]:
    """A profile by name or path, as plain data."""
    path = Path(name) if name.endswith(".yaml") else available_profiles().get(name)
    if path is None or not path.is_file():
        raise unknown_choice("slurm profile", name, available_profiles())
    return read_yaml(path, "slurm profile")


def slurm_config(args: dict[str, Any]) -> SlurmConfig:
    """``slurm=PROFILE`` and ``slurm.key=value`` arguments -> a validated :class:`SlurmConfig`."""
    profile = read_profile(str(args["slurm"])) if "slurm" in args else {}
    overrides = {k[len("slurm."):]: v for k, v in args.items() if k.startswith("slurm.")}
    where = f"slurm profile '{args['slurm']}'" if "slurm" in args else "slurm options"
    return validate_options(SlurmConfig, {**profile, **overrides}, where)


def deepspeed_config_file(name: str) -> Path:
    """``zero2`` / ``zero3`` (shipped in recipes/deepspeed) or a path to a DeepSpeed JSON config."""
    shipped = shipped_dir("vaeforge.recipes") / "deepspeed"
    path = Path(name) if name.endswith(".json") else shipped / f"{name}.json"
    if not path.is_file():
        choices = [p.stem for p in shipped.glob("*.json")]
        raise unknown_choice("DeepSpeed config", name, choices)
    return path.resolve()


def master_port(job_id: str) -> int:
    """The rendezvous port of a job: the same on every node and after every requeue."""
    return 20000 + zlib.crc32(job_id.encode()) % 30000


def rank_environment(master_addr: str | None) -> dict[str, str]:
    """torch.distributed's ``env://`` variables for this SLURM task (called inside the job)."""
    import submitit

    job = submitit.JobEnvironment()
    return {
        "MASTER_ADDR": master_addr or job.hostnames[0],
        "MASTER_PORT": str(master_port(str(job.job_id))),
        "RANK": str(job.global_rank),
        "LOCAL_RANK": str(job.local_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes),
        "GROUP_RANK": str(job.node),
    }


def _ignore_usr2() -> None:
    """In the training process: USR2 is task 0's business (submitit's checkpoint handler)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class TrainJob:
    """What every SLURM task runs: one training process of the job, as a child process."""

    overrides: list[str]  # training key=value arguments (run_dir and resume are added)
    run_dir: str  # absolute: the same folder for every rank
    env: dict[str, str]  # the same on every rank (DeepSpeed selection)
    master_addr: str | None
    then: list[str] = field(default_factory=list)  # `vaeforge run` arguments (task=...) run after training; [] none

    def command(self) -> list[str]:
        """Always ``resume=true``: a requeued job, for whatever reason, continues from the last checkpoint."""
        return [sys.executable, "-m", "vaeforge.train", *self.overrides, f"run_dir={self.run_dir}", "resume=true"]

    def then_command(self) -> list[str]:
        return [sys.executable, "-m", "vaeforge.run", *self.then, f"run_dir={self.run_dir}"]

    def __call__(self) -> dict[str, Any]:
        """Train on this rank, then (rank 0) run the ``then`` task; returns the state of the last checkpoint."""
        rank = rank_environment(self.master_addr)
        self._wait(self.command(), {**os.environ, **self.env, **rank}, f"rank {rank['RANK']}: training")
        if self.then and rank["RANK"] == "0":
            self._wait(self.then_command(), dict(os.environ), f"{self.then[0]} after training")
        return latest_state(Path(self.run_dir))

    def _wait(self, command: list[str], env: dict[str, str], what: str) -> None:
        """Run ``command`` as the child :meth:`checkpoint` stops on preemption."""
        self._child = subprocess.Popen(command, env=env, preexec_fn=_ignore_usr2)
        code = self._child.wait()
        if code != 0:
            raise VaeforgeError(f"{what} exited with status {code} (see this task's log)")

    def checkpoint(self) -> Any:
        """Preemption or time-out (task 0): let the training write a checkpoint and stop, then requeue.

        Runs in a signal handler while ``__call__`` may sit in ``Popen.wait`` holding the Popen's lock, so the
        child is signalled and reaped with plain ``os`` calls."""
        import submitit

        child = getattr(self, "_child", None)
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self))


def training_job(train_args: list[str], slurm: SlurmConfig, then: Sequence[str] = ()) -> TrainJob:
    """Validate the training arguments now (fail before queueing) and fix the run folder for all ranks."""
    from .train.__main__ import resolve_config

    args = parse_overrides(train_args)
    cfg = resolve_config(args)
    run_dir = Path(str(cfg.run_dir)).resolve()
    resume = bool(args.get("resume", False))
    refuse_overwrite(run_dir, resume)
    kept = [a for a in train_args if not a.startswith(("run_dir=", "resume="))]
    env = {}
    if slurm.deepspeed:
        env = {"ACCELERATE_USE_DEEPSPEED": "true",
               "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(deepspeed_config_file(slurm.deepspeed))}
    return TrainJob(kept, str(run_dir), env, slurm.master_addr, list(then))


def then_task(then: str | None, then_args: list[str]) -> list[str]:
    """``then=TASK`` and its ``then.<key>=value`` options, checked now: the ``vaeforge run`` arguments each job
    runs after training (without run_dir: the job's own)."""
    from .tasks.runner import task_options

    if then is None:
        if then_args:
            raise ConfigError(f"then.{then_args[0].split('=')[0]}: then.<key>=value options need then=TASK")
        return []
    args = parse_overrides(then_args)
    for key in ("task", "run_dir"):
        if key in args:
            raise ConfigError(f"then.{key}: the job runs then={then} on its own run folder; drop then.{key}")
    task_options({**args, "task": then, "run_dir": "<the job's run folder>"})
    return [f"task={then}", *then_args]


@contextlib.contextmanager
def naming(point: Point) -> Iterator[None]:
    """An error of one sweep point names it."""
    try:
        yield
    except VaeforgeError as exc:
        raise type(exc)(f"sweep point {' '.join(point.args())}: {exc}") from None


def sweep_jobs(spec: str, train_args: list[str], slurm: SlurmConfig, then: list[str]
               ) -> tuple[Path, list[Point], list[TrainJob]]:
    """The sweep's run folder (``run_dir``), its points, and a job per point, every point validated as a training
    config before anything is queued."""
    from .train.__main__ import resolve_config

    points = expand(spec)
    with naming(points[0]):  # run_dir: the given one, else the first point's default (a swept recipe may set it)
        root = Path(str(resolve_config(parse_overrides([*train_args, *points[0].args()])).run_dir)).resolve()
    base = [a for a in train_args if not a.startswith("run_dir=")]
    jobs = []
    for point in points:
        with naming(point):
            jobs.append(training_job([*base, *point.args(), f"run_dir={root / point.folder}"], slurm, then))
    return root, points, jobs


def executor(slurm: SlurmConfig, folder: Path, dry_run: bool = False) -> Any:
    """A submitit SLURM executor with the profile's resources (nothing is created until submit). A dry run only
    renders the sbatch script, so it also works where SLURM is not installed (submitit refuses without srun)."""
    import submitit

    class Renderer(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

    ex = (Renderer if dry_run else submitit.SlurmExecutor)(folder=folder, max_num_timeout=slurm.max_requeues)
    params = {
        "job_name": slurm.job_name, "partition": slurm.partition, "account": slurm.account,
        "constraint": slurm.constraint, "qos": slurm.qos, "nodes": slurm.nodes,
        "ntasks_per_node": slurm.processes_per_node, "cpus_per_task": slurm.cpus_per_task,
        "gpus_per_node": slurm.gpus_per_node or None, "mem": f"{slurm.mem_gb}GB" if slurm.mem_gb else None,
        "time": slurm.time_min, "signal_delay_s": slurm.signal_delay_s, "setup": list(slurm.setup),
        "array_parallelism": slurm.array_parallelism,
    }
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def describe_launch(job: TrainJob, slurm: SlurmConfig) -> str:
    """The launch every task runs, in words and as a command line."""
    world = slurm.nodes * slurm.processes_per_node
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in job.env.items())
    return (
        f"each of the {world} tasks ({slurm.nodes} node(s) x {slurm.processes_per_node}) runs one rank with\n"
        f"  MASTER_ADDR={slurm.master_addr or '<first node of the job>'} MASTER_PORT=<20000..49999 from the job id> "
        f"RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE={world} {env}\n"
        f"  {shlex.join(job.command())}"
        + (f"\nthen rank 0 runs\n  {shlex.join(job.then_command())}" if job.then else "")
    )


def _help(_: dict[str, Any]) -> str:
    profiles = ", ".join(available_profiles()) or "(none)"
    return help_text(USAGE, ABOUT, [("options (key=value)", SubmitOptions, ""),
                                    ("cluster options (slurm.key=value, over the profile's)", SlurmConfig, "slurm.")],
                     f"slurm=PROFILE: a profile of ./slurm or one shipped with vaeforge ({profiles})\n"
                     f"{DRY_RUN}: print the sbatch script and the launch; submit nothing\n"
                     "every other key=value is a training option: vaeforge train --help")


def _group(arg: str) -> str:
    return arg.split("=", 1)[0].split(".")[0]


def _describe_sweep(root: Path, points: list[Point], slurm: SlurmConfig) -> str:
    lines = [f"# sweep: {len(points)} point(s) as one SLURM array (at most {slurm.array_parallelism} at once), "
             f"run folders under {root}"]
    return "\n".join(lines + [f"#   task {i}: {p.folder}  ({' '.join(p.args())})" for i, p in enumerate(points)])


@entry_point
def main(argv: list[str]) -> None:
    dry_run = DRY_RUN in argv
    argv = [a for a in argv if a != DRY_RUN]
    args = read_args(argv, _help)
    slurm = slurm_config(args)
    raw = {_group(a): a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in ("sweep", "then")}
    opts = validate_options(SubmitOptions, raw, "submit")
    then = then_task(opts.then, [a[len("then."):] for a in argv if a.startswith("then.")])
    train_args = [a for a in argv if _group(a) not in OWN_KEYS]
    if opts.sweep:
        root, points, jobs = sweep_jobs(opts.sweep, train_args, slurm, then)
    else:
        jobs = [training_job(train_args, slurm, then)]
        root, points = Path(jobs[0].run_dir), []
    ex = executor(slurm, root / LOG_DIR, dry_run)
    if dry_run:
        if points:
            print(_describe_sweep(root, points, slurm))
        if len(jobs) > 1:
            ex.parameters["map_count"] = len(jobs)  # what submit_array sets: the sbatch --array line
        print("# sbatch script (not submitted)")
        print(ex._make_submission_file_text(ex._submitit_command_str, "dry-run"))
        print("# launch" + (" (of array task 0; each task: its point's overrides and run folder)" if points else ""))
        print(describe_launch(jobs[0], slurm))
        return
    if slurm.slurm_conf and "SLURM_CONF" not in os.environ:
        os.environ["SLURM_CONF"] = slurm.slurm_conf
    submitted = ex.submit_array(jobs)
    job_id = submitted[0].job_id.split("_")[0]
    shape = f"{slurm.nodes} node(s) x {slurm.processes_per_node} processes"
    if points:
        index = write_index(root, opts.sweep, points, [j.job_id for j in submitted], opts.then)
        logs = f"{job_id}_<point>" if len(points) > 1 else job_id  # submitit submits one point as a plain job
        log.info(f"submitted array job {job_id}: {len(points)} runs of {shape}\n  run folders: {root}/<point> "
              f"(index: {index})\n  logs: {root / LOG_DIR}/{logs}_<task>_log.out|err\n"
              f"  follow: squeue -j {job_id}\n  compare: vaeforge leaderboard dir={root}")
        return
    log.info(f"submitted job {job_id}: {shape}\n  run folder: {root}\n"
          f"  logs: {root / LOG_DIR}/{job_id}_<task>_log.out|err\n  follow: squeue -j {job_id}")


if __name__ == "__main__":
    main()
