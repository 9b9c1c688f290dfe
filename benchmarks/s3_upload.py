"""One large upload to S3 (moto's server on loopback): throughput and memory,
from a sync file against boto3 and 0.1.0, and from every other kind of source
(:mod:`benchmarks._sources`) against the sync file."""

from __future__ import annotations

import io
from typing import Any

from benchmarks._context import (
    Context,
    Job,
    extra,
    memory_mib,
    read_into_page_cache,
    throughput_mib_s,
)
from benchmarks._data import make_source_file
from benchmarks._harness import MIB, Timer
from benchmarks._report import Row, Target
from benchmarks._setups import STORAGE_KEY, legacy
from benchmarks._sources import SOURCES, open_source

__all__ = ["run"]

_PUT: dict[str, Any] = {"storage_key": STORAGE_KEY, "model_name": "document", "field_name": "file"}
_REGION = "us-east-1"
# Just over boto3's default multipart threshold and part size (8 MiB): two parts.
_WARM_UP_SIZE = 8 * MIB + 1
BUCKET = "granite-bench"


def _boto3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=_REGION)


def _check_size(client: Any, key: str, size: int) -> None:
    stored = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    if stored != size:
        raise RuntimeError(f"stored {stored} bytes at {key}, expected {size}")


async def granite_s3(
    timer: Timer, *, endpoint: str, source: str, size: int, expected: str, kind: str = "file"
) -> dict[str, float]:
    from granite_storage import StorageManager, StoragePolicy
    from granite_storage.backends.s3 import S3StorageBackend

    backend = S3StorageBackend(
        bucket=BUCKET, client_kwargs={"endpoint_url": endpoint, "region_name": _REGION}
    )
    policies = {STORAGE_KEY: StoragePolicy(STORAGE_KEY, "s3", key_prefix="bench")}
    async with StorageManager(backends={"s3": backend}, policies=policies) as manager:
        # A two-part warm-up: the client, its connections and the multipart
        # code paths are set up before the measurement, as they are for boto3.
        warm = await manager.aput_bytes(
            **_PUT, entity_id="warm-up", content=bytes(backend.part_size + 1)
        )
        async with open_source(kind, source, size) as stream:
            with timer:
                ref = await manager.aput_stream(**_PUT, entity_id=1, stream=stream)
        if ref.checksum != expected or ref.size != size:
            raise RuntimeError(f"stored {ref.size} bytes with {ref.checksum}, expected {expected}")
        await manager.adelete(ref)
        await manager.adelete(warm)
    return {
        "part_size": backend.part_size,
        "max_concurrency": backend.max_concurrency,
    }


def boto3_upload_fileobj(
    timer: Timer, *, endpoint: str, source: str, size: int, expected: str
) -> None:
    """boto3's managed transfer with its default TransferConfig (8 MiB parts, 10 threads)."""
    client = _boto3_client(endpoint)
    client.upload_fileobj(io.BytesIO(bytes(_WARM_UP_SIZE)), BUCKET, "warm-up")  # two parts
    with open(source, "rb") as file, timer:
        client.upload_fileobj(file, BUCKET, "upload_fileobj.bin")
    _check_size(client, "upload_fileobj.bin", size)
    client.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": "upload_fileobj.bin"}, {"Key": "warm-up"}]}
    )


def boto3_put_object(timer: Timer, *, endpoint: str, source: str, size: int, expected: str) -> None:
    """One PutObject request with the file as its body."""
    client = _boto3_client(endpoint)
    client.put_object(Bucket=BUCKET, Key="warm-up", Body=b"warm-up")
    with open(source, "rb") as file, timer:
        client.put_object(Bucket=BUCKET, Key="put_object.bin", Body=file)
    _check_size(client, "put_object.bin", size)
    client.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": "put_object.bin"}, {"Key": "warm-up"}]}
    )


def legacy_s3(timer: Timer, *, endpoint: str, source: str, size: int, expected: str) -> None:
    """0.1.0 spools the stream to a temporary file, then sends one PutObject."""
    client = _boto3_client(endpoint)
    backend = legacy("backends.s3").S3StorageBackend(bucket=BUCKET, client=client)
    manager = legacy("manager").StorageManager(
        backends={"s3": backend},
        policies={STORAGE_KEY: legacy("policies").StoragePolicy(STORAGE_KEY, "s3", None, "bench")},
    )
    warm = manager.put_bytes(**_PUT, entity_id="warm-up", content=b"warm-up")
    with open(source, "rb") as file, timer:
        ref = manager.put_stream(**_PUT, entity_id=1, stream=file)
    if ref.checksum != expected:
        raise RuntimeError(f"stored {ref.checksum}, expected {expected}")
    _check_size(client, ref.location, size)
    manager.delete(ref)
    manager.delete(warm)


def run(ctx: Context) -> list[Row]:
    import boto3

    size = ctx.sizes.s3_mib * MIB
    scenario = f"S3 {ctx.sizes.s3_mib} MiB upload through moto's server"
    data = ctx.scratch("s3-upload")
    source = data / "source.bin"
    expected = make_source_file(source, size)
    mod = "benchmarks.s3_upload"
    server = ctx.moto()
    client = boto3.client("s3", endpoint_url=server.url, region_name=_REGION)
    client.create_bucket(Bucket=BUCKET)
    kwargs = {"endpoint": server.url, "source": str(source), "size": size, "expected": expected}
    jobs = {kind: Job(f"{mod}:granite_s3", {**kwargs, "kind": kind}) for kind in SOURCES}
    out = ctx.compare(
        {
            **jobs,
            "fileobj": Job(f"{mod}:boto3_upload_fileobj", kwargs),
            "put": Job(f"{mod}:boto3_put_object", kwargs),
            "0.1.0": Job(f"{mod}:legacy_s3", kwargs, legacy=True),
        },
        before_each=lambda: read_into_page_cache(source),
    )
    client.delete_bucket(Bucket=BUCKET)
    granite = out["file"]
    part_size = granite.figure("", extra("part_size")).value or 8 * MIB
    concurrency = granite.figure("", extra("max_concurrency")).value or 4
    bound = (part_size * (concurrency + 1)) / MIB + 16
    speed = throughput_mib_s(size)
    labels = {"fileobj": "boto3 upload_fileobj", "put": "boto3 put_object"}

    def row(metric: str, unit: str, per_run: Any, worst: bool, targets: list[Target]) -> Row:
        return Row(
            scenario,
            metric,
            unit,
            unit == "MiB/s",
            granite.figure("granite_storage", per_run, worst=worst),
            [
                out[key].figure(label, per_run, worst=worst, short=label.split()[1])
                for key, label in labels.items()
            ],
            ctx.legacy_figure(out["0.1.0"], per_run, worst=worst),
            targets,
            show_ratios=unit == "MiB/s",
        )

    rows = [
        row("throughput", "MiB/s", speed, False,
            [Target(">= 1.0x upload_fileobj", 1.0, against=labels["fileobj"])]),
        row("peak RSS growth", "MiB", memory_mib, True,
            [Target(f"<= {bound:.0f} MiB (part x (concurrency+1) + 16)", bound)]),
    ]  # fmt: skip
    # Async sources take the loop's path (each chunk awaited, each part
    # uploaded by aiobotocore): as fast as the sync file, whose reads hop to
    # worker threads. "The same" allows 5%: the sync file against itself
    # moves that much between runs here.
    file_label = "granite_storage from a sync file"
    for kind in list(SOURCES)[1:]:
        name = f"{scenario} from {SOURCES[kind]}"
        rows += [
            Row(name, "throughput", "MiB/s", True, out[kind].figure("granite_storage", speed),
                [granite.figure(file_label, speed, short="sync file")],
                targets=[Target(">= 0.95x a sync file", 0.95, against=file_label)]),
            Row(name, "CPU seconds", "s", False,
                out[kind].figure("granite_storage", extra("cpu_seconds")),
                [granite.figure(file_label, extra("cpu_seconds"), short="sync file")],
                note="user+system CPU of the uploading process (moto's server not counted)"),
            Row(name, "peak RSS growth", "MiB", False,
                out[kind].figure("granite_storage", memory_mib, worst=True),
                targets=[Target(f"<= {bound:.0f} MiB (part x (concurrency+1) + 16)", bound)],
                show_ratios=False),
        ]  # fmt: skip
    return rows
