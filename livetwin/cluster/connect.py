"""Starting a cluster front end: every check that can fail comes before anything runs (no
PostgreSQL, a shard count or version that differs from the stored cluster, Ray missing or
unreachable, shards that cannot start), each refused with one line and its fix."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from livetwin.cluster.frontend import ClusterFrontend, RayShards, cause
from livetwin.cluster.meta import open_cluster
from livetwin.cluster.shard import NAMESPACE, start_shards
from livetwin.errors import InvalidInput, LivetwinError, Unavailable
from livetwin.settings import Settings

RAY_FIX = "start one with `ray start --head` (then --cluster auto), or give its address"


def ray_address(value: str) -> str:
    """`auto`, `ray://host:port` (Ray client) or `host:port` (the head's GCS), checked."""
    value = value.strip()
    if value == "auto":
        return value
    try:
        parts = urlsplit(value if "://" in value else f"gcs://{value}")
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("ray", "gcs") or not parts.hostname or not port:
        raise InvalidInput(
            f"--cluster {value!r} is not a Ray address",
            field="cluster",
            fix="use auto, ray://head:10001 or head:6379",
        )
    return value


def connect_ray(address: str) -> None:
    """Join the Ray cluster at `address` as a driver (Unavailable when Ray is not installed or
    nothing answers there; a dead address is probed first, ray.init would wait for minutes)."""
    try:
        import ray
    except ImportError:
        raise Unavailable(
            "cluster mode needs Ray, which is not installed",
            field="cluster",
            fix="pip install 'livetwin[ray]'",
        ) from None
    if address != "auto":
        parts = urlsplit(address if "://" in address else f"gcs://{address}")
        try:
            socket.create_connection((parts.hostname, parts.port), timeout=3).close()
        except OSError as exc:
            raise Unavailable(
                f"no Ray cluster answers at {address}: {exc.strerror or exc}",
                field="cluster",
                fix=RAY_FIX,
            ) from None
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            logging_level="WARNING",
            log_to_driver=False,
            configure_logging=False,
        )
    except ConnectionError as exc:
        raise Unavailable(
            f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}",
            field="cluster",
            fix=RAY_FIX,
        ) from None


def open_frontend(
    address: str,
    database: str | None,
    *,
    shards: int | None = None,
    name: str = "livetwin",
    placement: str | None = None,
    settings: Settings | None = None,
    data_dir: str = "livetwin-data",
    ready_timeout_s: float = 180.0,
) -> ClusterFrontend:
    """A front end on the cluster `name` in `database` over the Ray cluster at `address`,
    creating the cluster (with `shards` and `placement`) and starting its shard actors when
    they do not run; returns once every shard answers."""
    import time

    ray_address(address)
    open_cluster(database, shards=shards, name=name, placement=placement, create=False)
    connect_ray(address)
    import ray

    try:
        meta = open_cluster(database, shards=shards, name=name, placement=placement)
        handles = start_shards(meta)
        calls = {i: h.info.remote() for i, h in enumerate(handles)}
        deadline = time.monotonic() + ready_timeout_s
        for index, call in calls.items():
            try:
                ray.get(call, timeout=max(0.1, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                raise Unavailable(
                    f"shard {index} did not start within {ready_timeout_s:g} s",
                    field="cluster",
                    fix="check that the Ray nodes have room (`ray status`) and can reach "
                    "PostgreSQL; nodes that offer the resource livetwin_shard host the shards",
                ) from None
            except ray.exceptions.RayError as exc:
                error = cause(exc)
                if isinstance(error, LivetwinError):
                    raise error from None
                raise Unavailable(
                    f"shard {index} could not start: {str(error).splitlines()[-1]}",
                    field="cluster",
                    fix="see the Ray logs of the node (ray logs) and check PostgreSQL",
                ) from None
        return ClusterFrontend(
            meta, RayShards(handles), settings=settings, data_dir=data_dir, workflow_kind="ray"
        )
    except BaseException:
        ray.shutdown()
        raise
