"""Reading an upload: the body within its byte limit, the image out of a multipart form or a raw body,
then the header checked (format, pixel count) before a single pixel is decoded.

Every refusal is a `Rejected` carrying its HTTP status and a one-line reason; none is logged as a
traceback. Decoding mirrors `masksmith.data.images.read_image` (first frame, EXIF rotation, the same
conversion to uint8 channels), so a served image is the array `predict` reads from the same file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from masksmith.data.images import image_to_array
from masksmith.data.limits import ImageTooLarge, open_image
from masksmith.errors import MasksmithError
from masksmith.inference.work_budget import WorkTooLarge
from masksmith.serve.options import ServeOptions

RAW_TYPES = ("application/octet-stream",)
FORM_TYPE = "multipart/form-data"


class Rejected(Exception):
    """A request refused with an HTTP status and a one-line reason (and optional headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Upload:
    """The uploaded file's bytes and the name the client gave it (if any)."""

    data: bytes
    name: str


@dataclass
class Decoded:
    """A decoded upload: HxWxC uint8 pixels and what they came from."""

    array: np.ndarray
    format: str
    mode: str


def _too_big(limit: int) -> Rejected:
    return Rejected(413, f"request body over the limit of {limit} bytes (raise it with --max-upload-mb)")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared length) passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_big(limit)  # before reading a byte of it
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_big(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise Rejected(400, "the client disconnected before its upload was complete") from None
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_upload(request: Request, options: ServeOptions) -> Upload:
    """The image file of a request: the file part of a multipart form, or the raw body."""
    media = _media_type(request)
    if media and media != FORM_TYPE and not media.startswith("image/") and media not in RAW_TYPES:
        raise Rejected(415, f"content type {media!r} is not accepted: send the image as multipart/form-data "
                            "(a file field) or as the raw body with an image/* or application/octet-stream type")
    body = await read_body(request, options.max_upload_bytes)
    if media != FORM_TYPE:
        return Upload(body, "body")
    form = await _parse_form(request, body)
    files = [value for value in form.values() if isinstance(value, UploadFile)]
    if not files:
        raise Rejected(400, "the multipart form holds no file: send the image as a file field, e.g. "
                            "curl -F image=@photo.jpg")
    return Upload(await files[0].read(), files[0].filename or "upload")


async def _parse_form(request: Request, body: bytes) -> Any:
    """Parse a multipart body already read (within the limit) by replaying it to Starlette's form parser."""
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except HTTPException as error:
        raise Rejected(400, f"malformed multipart form: {error.detail}") from None
    except Exception as error:  # the multipart parser raises its own types for broken framing
        raise Rejected(400, f"malformed multipart form: {' '.join(str(error).split()) or type(error).__name__}") from None


def _claimed_format(data: bytes, formats: tuple[str, ...]) -> str | None:
    """The accepted format whose signature the data starts with (PIL's own test), if any."""
    Image.init()
    for name in formats:
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is not None and accept(data[:16]):
            return name
    return None


def decode_image(upload: Upload, channels: int, options: ServeOptions,
                 admit: Callable[[int, int, str], None] | None = None) -> Decoded:
    """Pixels of an upload, after refusing empty, unknown-format and too-large images from the header alone.

    `admit(height, width, mode)` runs on the header before any pixel is decoded; it may refuse the
    image (Rejected, or WorkTooLarge: 413).
    """
    if not upload.data:
        raise Rejected(400, f"{upload.name}: empty upload (0 bytes)")
    where = upload.name
    try:
        # open_image reads the header only and refuses more pixels than --max-pixels before decoding.
        with open_image(io.BytesIO(upload.data), "image", where=where, limit=options.max_pixels,
                        setting="--max-pixels") as image:
            if image.format not in options.formats:
                raise Rejected(415, f"{where}: {image.format} images are not accepted "
                                    f"(accepted: {', '.join(options.formats)})")
            width, height = image.size
            if admit is not None:
                admit(height, width, image.mode)
            source_format, mode = image.format or "", image.mode
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's warnings on odd metadata: the pixels are what count
                image.load()
                # As read_image: photos are predicted upright, as their EXIF rotation tag says.
                upright = ImageOps.exif_transpose(image)
                return Decoded(image_to_array(upright, channels), source_format, mode)
    except Rejected:
        raise
    except (ImageTooLarge, WorkTooLarge) as error:
        raise Rejected(413, str(error)) from None
    except UnidentifiedImageError:
        claimed = _claimed_format(upload.data, options.formats)
        if claimed is not None:  # its signature says what it is: the rest is cut short or broken
            raise Rejected(422, f"{where}: cannot decode the image: a truncated or damaged {claimed} file "
                                "(its header is incomplete)") from None
        raise Rejected(415, f"{where}: not an image in an accepted format "
                            f"({', '.join(options.formats)})") from None
    except MasksmithError as error:
        raise Rejected(422, f"{where}: {error}") from None
    except Exception as error:  # truncated or corrupt files: PIL raises OSError, SyntaxError, ValueError, ...
        reason = " ".join(str(error).split()) or type(error).__name__
        raise Rejected(422, f"{where}: cannot decode the image: {reason}") from None
