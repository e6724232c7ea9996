"""Why an input file was not accepted: machine-readable codes plus a human message.

Expected bad input is data, not an exception: readers raise :class:`Rejected`, and the
ingestion boundary turns it into a row of the rejected list.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    NOT_AN_IMAGE = "not_an_image"
    TEXT_FILE = "text_file"  # label/report sidecars; read by the labels stage, not images
    UNREADABLE = "unreadable"  # the file system refused to give us the bytes
    CORRUPT = "corrupt"  # truncated or undecodable
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    MODALITY_NOT_ALLOWED = "modality_not_allowed"
    BODY_PART_NOT_CHEST = "body_part_not_chest"
    LATERAL_VIEW = "lateral_view"
    MULTI_FRAME = "multi_frame"
    NOT_GRAYSCALE = "not_grayscale"
    TOO_SMALL = "too_small"
    DUPLICATE = "duplicate"


# Reasons that do not say anything about the quality of the image data: a dataset folder
# legitimately holds label CSVs and report XMLs next to the images.
NOT_IMAGE_CANDIDATES = frozenset({Reason.TEXT_FILE})


class Rejected(Exception):
    """Raised by readers for expected bad input; carries the reason and a message."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
