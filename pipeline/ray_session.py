"""Joining a Ray cluster, or starting a local one, for a sweep's driver."""

from __future__ import annotations

import os
import signal
import socket
import time

import ray

from scaling.errors import InputError


def start_ray(address: str | None, wait_nodes: int = 0, timeout: float = 300.0) -> bool:
    """Join the cluster at `address`, or start a local one sized to this machine; True if started here.

    With `wait_nodes`, first wait (up to `timeout` seconds) for the head to listen and for that many
    nodes to join: a job script starts the head and the workers just before the driver.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    handler = signal.getsignal(signal.SIGTERM)
    deadline = time.monotonic() + timeout  # one budget for the head to listen and the nodes to join
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        if wait_nodes:
            _wait_for_port(address, deadline)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    if callable(handler):  # ray.init puts its own SIGTERM handler (log, then abort) over the caller's: restore it
        signal.signal(signal.SIGTERM, handler)
    while sum(node["Alive"] for node in ray.nodes()) < wait_nodes:
        if time.monotonic() > deadline:
            alive = sum(node["Alive"] for node in ray.nodes())
            ray.shutdown()
            raise InputError("--wait-nodes", f"{wait_nodes} nodes did not join {address} within {timeout:.0f} s; {alive} did")
        time.sleep(1.0)
    return True


def _wait_for_port(address: str, deadline: float) -> None:
    """Wait until something listens at HOST:PORT (connecting to a head that is not up yet hangs for minutes)."""
    host, _, port = address.rpartition(":")
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise InputError("--address", f"nothing listens at {address}; is the Ray head up?") from None
            time.sleep(0.5)
