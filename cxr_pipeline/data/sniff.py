"""Recognize a file's format from its first bytes, never from its name.

PACS exports often have no extension (``IM000123``) and mislabelled files are common, so the
extension is only ever used in messages.
"""

from __future__ import annotations

import zlib
from enum import Enum
from pathlib import Path

HEADER_BYTES = 512


class FileKind(str, Enum):
    DICOM = "dicom"
    DICOM_NO_PREAMBLE = "dicom_no_preamble"
    PNG = "png"
    JPEG = "jpeg"
    TEXT = "text"
    UNKNOWN = "unknown"


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_JPEG_MAGIC = b"\xff\xd8\xff"


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set written without the 128-byte preamble starts with a group 0x0002 or
    0x0008 element in little endian (the File Meta or Identifying group)."""
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    if group not in (0x0002, 0x0008) or element > 0x0020:
        return False
    vr = head[4:6]
    # Explicit VR has two upper-case letters here; implicit VR has a 4-byte length.
    return (vr.isalpha() and vr.isupper()) or int.from_bytes(head[4:8], "little") < 1024


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut at the end of the window is still text.
        if error.start < len(head) - 4:
            return False
    return True


def gunzipped_head(head: bytes) -> bytes:
    """The first decompressed bytes of a gzip stream's first bytes (MIMIC ships ``.csv.gz``)."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, HEADER_BYTES)
    except zlib.error:
        return b""


def sniff_bytes(head: bytes) -> FileKind:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return FileKind.DICOM
    if head.startswith(_PNG_MAGIC):
        return FileKind.PNG
    if head.startswith(_JPEG_MAGIC):
        return FileKind.JPEG
    if _looks_like_bare_dicom(head):
        return FileKind.DICOM_NO_PREAMBLE
    if _looks_like_text(head):
        return FileKind.TEXT
    if head.startswith(_GZIP_MAGIC) and _looks_like_text(gunzipped_head(head)):
        return FileKind.TEXT  # compressed label tables: text for the labels stage
    return FileKind.UNKNOWN


def sniff_file(path: Path) -> FileKind:
    with open(path, "rb") as handle:
        return sniff_bytes(handle.read(HEADER_BYTES))
