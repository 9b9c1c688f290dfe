# Vendored from granite-storage 0.1.0's sdist (tests/test_s3_storage.py), MIT licence: see
# tests/compat/LICENSE. Changed: the import lines only (granite_storage.sync,
# and tests.compat.moto_server for mock_aws; sorted) and these header lines, which
# keep ruff off the original code. Expected failures: tests/compat/conftest.py.
# fmt: off
import io
import uuid

import boto3
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from granite_storage.sync import (
    S3StorageBackend,
    StorageManager,
    StoragePolicy,
    StoredContentMixin,
    StoredObjectRef,
    StoredObjectRefType,
)
from tests.compat.moto_server import mock_aws


class Base(DeclarativeBase):
    pass


class DummyModel(StoredContentMixin, Base):
    __tablename__ = "dummy_model"
    __stored_content_field_name__ = "_content_ref"
    __stored_content_storage_key__ = "dummy_content"

    id: Mapped[str] = mapped_column(primary_key=True, default=lambda: str(uuid.uuid4()))
    _content_ref: Mapped[StoredObjectRef | None] = mapped_column(
        StoredObjectRefType(), nullable=True
    )


@mock_aws
def test_s3_stream_roundtrip():
    s3 = boto3.client("s3", region_name="eu-west-1")
    s3.create_bucket(
        Bucket="test-bucket",
        CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
    )
    manager = StorageManager(
        backends={
            "s3": S3StorageBackend(bucket="test-bucket", prefix="dev", client=s3)
        },
        policies={
            "dummy_content": StoragePolicy(
                storage_key="dummy_content",
                backend_key="s3",
                max_size=1024,
                key_prefix="tests",
            )
        },
    )
    DummyModel.configure_storage_manager(manager)
    obj = DummyModel(id=str(uuid.uuid4()))
    obj.set_content_from_stream(io.BytesIO(b"hola-s3"), filename="demo.txt")
    assert obj.get_content() == b"hola-s3"
