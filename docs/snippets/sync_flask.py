"""A Flask app that uploads and downloads files through granite_storage.sync."""

import tempfile
from collections.abc import Iterator
from pathlib import Path

from flask import Flask, Response, abort, request
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from sync_script import Base, Document  # the model of docs/snippets/sync_script.py

from granite_storage.sync import (
    ContentTooLargeError,
    LocalStorageBackend,
    StorageManager,
    StoragePolicy,
)


# --8<-- [start:app]
def create_app(root: Path) -> tuple[Flask, StorageManager]:
    app = Flask(__name__)
    engine = create_engine(f"sqlite:///{root / 'app.db'}")
    Base.metadata.create_all(engine)
    # One manager for the process, shared by every request thread.
    manager = StorageManager(
        backends={"local": LocalStorageBackend(root / "storage")},
        policies={"docs": StoragePolicy("docs", "local", max_size=1 << 20, key_prefix="docs")},
    )

    @app.put("/documents/<int:doc_id>/file")
    def upload(doc_id: int) -> tuple[dict[str, object], int]:
        try:  # the body is streamed: never held whole, refused past max_size
            ref = manager.put_stream(
                storage_key="docs", model_name="document", entity_id=doc_id,
                field_name="file", stream=request.stream,
                content_type=request.content_type,
                original_filename=request.args.get("filename"),
            )  # fmt: skip
        except ContentTooLargeError:
            abort(413)
        with Session(engine) as session, session.begin():
            session.merge(Document(id=doc_id, file_ref=ref))
        return {"size": ref.size, "checksum": ref.checksum}, 201

    @app.get("/documents/<int:doc_id>/file")
    def download(doc_id: int) -> Response:
        with Session(engine) as session:
            doc = session.get(Document, doc_id)
        if doc is None or doc.file_ref is None:
            abort(404)
        ref = doc.file_ref
        file = manager.open(ref)

        def chunks() -> Iterator[bytes]:
            with file:  # closed when the response ends
                while chunk := file.read(64 * 1024):
                    yield chunk

        return Response(chunks(), mimetype=ref.content_type, headers={"Content-Length": ref.size})

    return app, manager


# --8<-- [end:app]


def main(root: Path) -> None:
    app, manager = create_app(root)
    with manager:  # a real app closes it at shutdown (or lets the exit close it)
        client = app.test_client()
        body = b"hello from flask " * 1000
        created = client.put("/documents/7/file?filename=notes.txt", data=body)
        assert created.status_code == 201, created.data
        downloaded = client.get("/documents/7/file")
        assert downloaded.status_code == 200
        assert downloaded.data == body
        assert downloaded.mimetype == "text/plain"
        too_big = client.put("/documents/8/file", data=b"x" * (2 << 20))
        assert too_big.status_code == 413
        assert client.get("/documents/8/file").status_code == 404
    print("sync flask: ok")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
