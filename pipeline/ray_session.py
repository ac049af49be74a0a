"""Joining a Ray cluster, or starting a local one, for a sweep's driver."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from pipeline.local_head import LocalHead
from scaling.errors import InputError


@contextmanager
def ray_session(address: str | None = None, wait_nodes: int = 0, timeout: float = 300.0) -> Iterator[None]:
    """Be connected to Ray for the body: to the cluster at `address`, or to a local head started here.

    The local head (`pipeline.local_head`) is sized by Ray to this machine (its CPU quota in a
    container) and stopped, every process of it, when the body ends or this process dies; a cluster
    at `address` is left running. With `wait_nodes`, first wait (up to `timeout` seconds) for the
    head to listen and for that many nodes to join: a job script starts the head and the workers
    just before the driver. Already connected: the body runs on that connection, which stays.
    """
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    deadline = time.monotonic() + timeout  # one budget for the head to listen and the nodes to join
    head = LocalHead.start() if address is None else None
    try:
        if head is None and wait_nodes:
            _wait_for_port(address, deadline)
        _connect(head.address if head else address)
        try:
            _wait_for_nodes(wait_nodes, address, deadline, timeout)
            yield
        finally:
            ray.shutdown()
    finally:
        if head is not None:
            head.stop()


def _connect(address: str) -> None:
    """`ray.init` to `address`, keeping the caller's SIGTERM handler (Ray puts its own, log then abort, over it)."""
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def _wait_for_nodes(wait_nodes: int, address: str | None, deadline: float, timeout: float) -> None:
    """Wait until `wait_nodes` nodes are alive; InputError naming how many did once `deadline` passed."""
    while (alive := sum(node["Alive"] for node in ray.nodes())) < wait_nodes:
        if time.monotonic() > deadline:
            raise InputError("--wait-nodes", f"{wait_nodes} nodes did not join {address} within {timeout:.0f} s; {alive} did")
        time.sleep(1.0)


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
