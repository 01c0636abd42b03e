"""PNG chunks and JPEG segments put into the file libvips writes, as it writes it.

libvips writes neither PNG colour (gAMA, cHRM, sRGB) nor text chunks as they were read, nor JPEG comments.
They are built here (`png_chunk`, `jpeg_segment`) and inserted into the stream libvips writes
(`InsertingTarget`), after the PNG header chunk or after the JPEG's APPn segments, where readers look for
them; the bytes before that point are held back until it is seen, the rest pass straight through.
"""

from __future__ import annotations

import os
import struct
import zlib

import pyvips


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    """One JPEG marker segment; `payload` at most metadata.JPEG_MAX_PAYLOAD bytes."""
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


class InsertingTarget(pyvips.TargetCustom):
    """Passes what libvips writes on to a file descriptor, with `inserted` bytes (PNG chunks or JPEG
    segments) put in after the PNG header chunk (IHDR), or after the JPEG's leading APPn segments."""

    def __init__(self, fd: int, image_format: str, inserted: bytes):
        super().__init__()
        self._fd = fd
        self._format = image_format
        self._inserted = inserted
        self._head = b""  # held back until the insertion point has been seen
        self._error: BaseException | None = None
        self.on_write(self._write)
        self.on_end(self._end)

    def _insertion_point(self) -> int | None:
        """Where the insertion goes in the bytes held back, or None while more are needed."""
        head = self._head
        if self._format == "png":
            if len(head) < 33:  # signature and IHDR
                return None
            if head[12:16] != b"IHDR":
                raise OSError("libvips wrote a PNG without IHDR first")
            return 33
        position = 2  # after SOI
        while True:
            if len(head) < position + 4:
                return None
            if head[position] != 0xFF:
                raise OSError("libvips wrote a JPEG that cannot be followed")
            if not 0xE0 <= head[position + 1] <= 0xEF:
                return position
            position += 2 + int.from_bytes(head[position + 2 : position + 4], "big")

    def _out(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _write(self, data: bytes) -> int:
        try:
            if self._inserted is None:
                self._out(data)
                return len(data)
            self._head += bytes(data)
            point = self._insertion_point()
            if point is not None:
                self._out(self._head[:point] + self._inserted + self._head[point:])
                self._inserted, self._head = None, b""
            return len(data)
        except BaseException as error:  # raised again by check(), outside libvips
            self._error = error
            return -1

    def _end(self) -> int:
        if self._inserted is not None and self._error is None:
            self._error = OSError("libvips ended the file before the place for its metadata")
        return -1 if self._error is not None else 0

    def check(self) -> None:
        """Raise what went wrong while writing, if anything did."""
        if self._error is not None:
            raise self._error
