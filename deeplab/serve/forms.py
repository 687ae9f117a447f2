"""An upload form read in memory, with a cap on every part: nothing of a request is written
to disk.

Starlette's own form parser spools a file part past 1 MB to a temporary file, so a body
without a declared size reached the disk whole before the size check could refuse it.
Here python-multipart (the parser Starlette uses) keeps every part in memory
(``MAX_MEMORY_FILE_SIZE`` = infinity) while ``Guard`` caps the body itself at the upload
limit as it arrives; the form may hold one file and a few short fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

MAX_PARTS = 12  # one image and the few fields of POST /v1/segment
MAX_FIELD_BYTES = 1024  # a model name, an output kind, a class name


class FormError(ValueError):
    """A form this API cannot take; the message says why (the status is 400 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Form:
    """The fields by name (text) and the files by field name: (file name, bytes)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class FormReader:
    """Feed the body's chunks (``feed``), then ``finish()`` -> ``Form``."""

    def __init__(self, content_type: str | None) -> None:
        kind, params = parse_options_header(content_type or "")
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise FormError("send the photo as multipart/form-data (curl -F image=@photo.jpg)",
                            status=415)  # fmt: skip
        self.form = Form()
        self.parts = 0

        def on_field(f) -> None:
            self._count()
            name = (f.field_name or b"").decode("utf-8", "replace")
            self.form.fields[name] = (f.value or b"").decode("utf-8", "replace")

        def on_file(f) -> None:
            self._count()
            name = (f.field_name or b"").decode("utf-8", "replace")
            filename = (f.file_name or b"upload").decode("utf-8", "replace")
            f.file_object.seek(0)
            self.form.files[name] = (filename, f.file_object.read())

        self.parser = FormParser(
            "multipart/form-data", on_field, on_file, boundary=params[b"boundary"],
            config={"MAX_MEMORY_FILE_SIZE": float("inf"), "MAX_FIELD_SIZE": MAX_FIELD_BYTES,
                    "MAX_FIELDS": MAX_PARTS},
        )  # fmt: skip

    def _count(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise FormError(f"the form has more than {MAX_PARTS} parts; send one image and "
                            "the documented fields")  # fmt: skip

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as e:
            raise FormError(f"malformed multipart body ({e})") from None

    def finish(self) -> Form:
        try:
            self.parser.finalize()
        except FormParserError as e:
            raise FormError(f"malformed multipart body ({e})") from None
        return self.form
