"""`dcsl submit` and `dcsl cancel`: a sweep as one SLURM job (a Ray cluster over its nodes), and stopping it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pipeline.cli import app, fail
from pipeline.cli.study_options import checked_study_line, with_study_flags

if TYPE_CHECKING:  # the sweep schema (pydantic, scipy) and the SLURM client load when a command runs
    from pipeline.config import SweepConfig
    from pipeline.submit import JobOptions


@app.command("submit")
@with_study_flags
def submit_command(
    sweep_file: Path = typer.Argument(..., help="The sweep YAML file."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes of the allocation (>= 1): a Ray head and nodes-1 workers."),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="GPUs per node (Ray gets as many)."),
    cpus_per_node: int | None = typer.Option(None, "--cpus-per-node", help="CPUs per node; default: SLURM's default for one task."),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition."),
    account: str | None = typer.Option(None, "--account", help="SLURM account."),
    time_limit: str | None = typer.Option(None, "--time", help="Time limit: MINUTES, HH:MM:SS or D-HH:MM:SS; the job requeues itself before it."),
    mem: str | None = typer.Option(None, "--mem", help="Memory per node, e.g. 64G."),
    extra_sbatch: str | None = typer.Option(None, "--extra-sbatch", help='More sbatch options, e.g. "--qos=high --constraint=a100".'),
    store: Path | None = typer.Option(None, "--store", help="Store root; default: the file's 'store:'."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the job script; submit nothing, write nothing."),
    study=None,
) -> None:
    """Submit a sweep to SLURM as one job: a Ray cluster over its nodes runs `dcsl sweep` and requeues on preemption.

    With an active study's flags (--rounds R --round-budget B --target-flops C ...), checked here, the
    job runs the study: `dcsl sweep` with the same flags.
    """
    from pipeline.config import load_sweep
    from pipeline.submit import JobOptions, partition_has_gpus, prepare_job, render, submit

    options = JobOptions(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node, partition=partition,
                         account=account, time=time_limit, mem=mem, extra_sbatch=extra_sbatch)  # fmt: skip
    options.check()
    sweep = load_sweep(sweep_file)
    root = (store or Path(sweep.store)).resolve()
    options = JobOptions(**{**options.__dict__, "job_name": f"dcsl-{sweep.name}"})
    _check_fits_job(sweep, options)
    study_flags = [] if study is None else study.flags()
    if study is not None:
        typer.echo(checked_study_line(sweep, study, root), err=True)
    if dry_run:
        log = root / "slurm" / f"{sweep.name}-<time>" / "slurm-%j.out"
        typer.echo(render(options, sweep_file.resolve(), root, log, study_flags=study_flags), nl=False)
        return
    if gpus_per_node and partition_has_gpus(partition) is False:
        fail("--gpus-per-node", f"{gpus_per_node}, but partition {partition or '(the default)'!r} has no GPUs (sinfo lists no gpu gres)")
    script = prepare_job(sweep.name, sweep_file, root, options, study_flags=study_flags)
    job_id = submit(script, options)
    typer.echo(f"submitted job {job_id}: sweep {sweep.name}, {nodes} node(s)" + (f" x {gpus_per_node} GPU(s)" if gpus_per_node else ""))
    typer.echo(f"script {script}")
    typer.echo(f"log    {script.parent / f'slurm-{job_id}.out'}")
    typer.echo(f"follow it with: dcsl status {root}")


def _check_fits_job(sweep: SweepConfig, options: JobOptions) -> None:
    """Every run must fit the allocation: its nodes, GPUs per node and CPUs per node."""
    from pipeline.cluster import check_fits_cluster
    from pipeline.expand import expand

    node = {"CPU": float(options.cpus_per_node or 1e9), "GPU": float(options.gpus_per_node)}
    capacities = [dict(node) for _ in range(options.nodes)]
    check_fits_cluster(expand(sweep), capacities, sweep.resources_field, holder="the job (--nodes, --gpus-per-node, --cpus-per-node)")


@app.command("cancel")
def cancel_command(
    store: Path = typer.Argument(Path("store"), help="The store root the job runs on."),
    job: str | None = typer.Option(None, "--job", help="The job id; default: the store's latest active job."),
    wait: float = typer.Option(120.0, "--wait", help="Seconds to wait for the job to end before releasing its steps."),
) -> None:
    """Cancel the sweep's SLURM job; its running steps end INTERRUPTED (not failed) and resume on the next sweep."""
    from pipeline.store import Store
    from pipeline.submit import ACTIVE, cancel, job_state, jobs

    known = jobs(store)
    if job is None:
        active = [record["job_id"] for record in known if job_state(record["job_id"])["state"] in ACTIVE]
        if not active:
            fail("store", f"{str(store)!r} has no active SLURM job" + (f" (its jobs: {', '.join(r['job_id'] for r in known)})" if known else ""))
        job = active[-1]
    cancel(job)
    deadline = time.monotonic() + wait
    while job_state(job)["state"] in ACTIVE and time.monotonic() < deadline:
        time.sleep(1.0)
    state = job_state(job)["state"]
    interrupted = Store(store).interrupt_job(job, f"SLURM job {job} cancelled")
    typer.echo(f"job {job}: {state}; {len(interrupted)} step(s) it still held marked interrupted")
    for step in interrupted:
        typer.echo(f"  {step}")
