"""A push parser for ``multipart/form-data`` that keeps one file part streaming.

:class:`MultipartReceiver` wraps python-multipart's ``MultipartParser``. Bytes
are pushed in with :meth:`MultipartReceiver.feed` as they arrive; the parser's
callbacks run synchronously inside ``feed`` and only record what they saw:
the file part's headers, the file bytes parsed so far (taken out with
:meth:`MultipartReceiver.take_file_data` after each feed, so they never pile
up), and the small non-file fields, which are size-limited. No I/O here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from granite_storage.errors import ContentTooLargeError, InvalidUploadError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: The most bytes of headers (names and values together) one part may carry.
MAX_PART_HEADER_SIZE = 8 * 1024


class MultipartReceiver:
    """Parse a ``multipart/form-data`` body pushed in chunk by chunk.

    :param boundary: the boundary from the request's ``Content-Type``.
    :param file_field: the name of the one part whose content is the file.
    :param max_fields: the most non-file parts accepted.
    :param max_field_size: the most bytes one non-file field's value may have.
    """

    def __init__(
        self, boundary: bytes, *, file_field: str, max_fields: int, max_field_size: int
    ) -> None:
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_end": self._on_end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except (ValueError, MultipartParseError) as exc:
            raise InvalidUploadError(f"invalid multipart boundary: {exc}") from exc
        #: The name of the part holding the file.
        self.file_field = file_field
        self._max_fields = max_fields
        self._max_field_size = max_field_size
        # The part being parsed.
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._header_size = 0
        self._headers: dict[bytes, bytes] = {}
        self._in_file = False
        self._field_name: str | None = None
        self._field_value = bytearray()
        self._file_data = bytearray()
        #: Whether the file part's headers were seen (then the file is streaming).
        self.file_started = False
        #: The file part's ``filename`` (UTF-8 or Latin-1 decoded), if any.
        self.filename: str | None = None
        #: The file part's ``Content-Type``, if any.
        self.content_type: str | None = None
        #: The file bytes parsed so far, including those already taken.
        self.file_size = 0
        #: The non-file fields in the order they came.
        self.fields: list[tuple[str, str]] = []
        #: Whether the closing boundary was parsed: the body is complete.
        self.ended = False

    def feed(self, data: bytes) -> None:
        """Parse ``data``, the next bytes of the body.

        :raises InvalidUploadError: for a malformed body or a broken limit on
            the number of fields, part headers or a repeated file part.
        :raises ContentTooLargeError: for a field larger than ``max_field_size``.
        """
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise InvalidUploadError(f"malformed multipart body: {exc}") from exc

    def take_file_data(self) -> bytes:
        """The file bytes parsed since the last call (``b""`` if none)."""
        if not self._file_data:
            return b""
        data = bytes(self._file_data)
        self._file_data.clear()
        return data

    # -- parser callbacks (synchronous, inside feed) ----------------------------

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_size = 0
        self._in_file = False
        self._field_name = None
        self._field_value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_value += data[start:end]

    def _count_header_bytes(self, n: int) -> None:
        self._header_size += n
        if self._header_size > MAX_PART_HEADER_SIZE:
            raise InvalidUploadError(
                f"a multipart part has more than {MAX_PART_HEADER_SIZE} bytes of headers"
            )

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).strip().lower()] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidUploadError(
                'every multipart part needs a "Content-Disposition: form-data; name=..." header'
            )
        name = _decode_header_text(options[b"name"])
        if name == self.file_field:
            if self.file_started:
                raise InvalidUploadError(f"the form has more than one {name!r} part")
            self._in_file = True
            self.file_started = True
            raw_filename = options.get(b"filename")
            self.filename = _decode_header_text(raw_filename) if raw_filename else None
            raw_type = self._headers.get(b"content-type")
            self.content_type = raw_type.decode("latin-1") if raw_type else None
            return
        if b"filename" in options:
            raise InvalidUploadError(
                f"the form has a file in part {name!r}; only one file, in part "
                f"{self.file_field!r}, is accepted"
            )
        if len(self.fields) >= self._max_fields:
            raise InvalidUploadError(f"the form has more than {self._max_fields} fields")
        self._field_name = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._file_data += data[start:end]
            self.file_size += end - start
            return
        self._field_value += data[start:end]
        if len(self._field_value) > self._max_field_size:
            raise ContentTooLargeError(
                f"form field {self._field_name!r} is larger than the limit of "
                f"{self._max_field_size} bytes",
                max_size=self._max_field_size,
            )

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            return
        if self._field_name is None:  # pragma: no cover - headers_finished always ran
            return
        try:
            value = self._field_value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidUploadError(
                f"form field {self._field_name!r} is not valid UTF-8 text"
            ) from exc
        self.fields.append((self._field_name, value))
        self._field_name = None
        self._field_value.clear()

    def _on_end(self) -> None:
        self.ended = True


def _decode_header_text(raw: bytes) -> str:
    """Browsers send UTF-8 in multipart header parameters, which the parser
    hands over as Latin-1 bytes; old clients send Latin-1 itself."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
