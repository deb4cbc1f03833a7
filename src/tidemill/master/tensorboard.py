"""TensorBoard event files, written by the job master: one run (folder) per replica.

The format is small and stable (TFRecord framing around ``Event`` protocol buffers with
a ``simple_value`` per scalar), so it is written here rather than pulling TensorBoard's
own writer (and protobuf and grpc with it) into every job master for a dozen fields.
``tensorboard --logdir DIR`` reads what this writes.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import BinaryIO

from tidemill.master.persistence import log


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord frames use it.

    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked(crc32c(length)))
        + data
        + struct.pack("<I", _masked(crc32c(data)))
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, scalars: dict[str, float]) -> bytes:
    """An ``Event`` whose ``Summary`` holds one ``simple_value`` per scalar."""
    values = b"".join(
        _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
        for tag, value in scalars.items()
    )
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _field(5, values)


def version_event(wall_time: float) -> bytes:
    """The first event of every file: its format version."""
    return b"\x09" + struct.pack("<d", wall_time) + _field(3, b"brain.Event:2")


class EventFiles:
    """``<folder>/<replica>/events.out.tfevents.*``, opened on a replica's first report."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._files: dict[str, BinaryIO] = {}
        self._failed = False

    def write(self, replica: str, step: int, wall_time: float, scalars: dict[str, float]) -> None:
        out = self._file(replica)
        if out is None:
            return
        try:
            out.write(record(event(wall_time, step, scalars)))
        except OSError as exc:
            self._fail(exc)

    def flush(self) -> None:
        for out in self._files.values():
            try:
                out.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        self.flush()
        for out in self._files.values():
            out.close()
        self._files.clear()

    def _file(self, replica: str) -> BinaryIO | None:
        out = self._files.get(replica)
        if out is not None or self._failed:
            return out
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.tidemill"
        try:
            path = self.folder / replica
            path.mkdir(parents=True, exist_ok=True)
            out = (path / name).open("ab")
            out.write(record(version_event(now)))
        except OSError as exc:
            self._fail(exc)
            return None
        self._files[replica] = out
        return out

    def _fail(self, exc: OSError) -> None:
        """Training goes on without event files; the master's log says why, once."""
        if not self._failed:
            log(f"cannot write TensorBoard event files under {self.folder}: {exc}")
        self._failed = True
