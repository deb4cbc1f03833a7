"""File checksums: taken after a checkpoint is written, verified before it is loaded.

CRC-32 (the zlib polynomial), computed with ISA-L's folding implementation: on the
2-core development machine, over 256 MiB in memory, ``isal_zlib.crc32`` runs at
14 GB/s and ``zlib.crc32`` at 2.2 GB/s, for the same value (checkpoints written with
either verify with the other). Restore has to read and verify every byte, and should
take no longer than a plain ``torch.load``, so the cheapest check that catches torn,
truncated and bit-flipped files wins; CRC-32 does not defend against deliberate
tampering, which is not what a checkpoint checksum is for.
"""

from __future__ import annotations

from typing import Any

from isal.isal_zlib import crc32 as crc32
from isal.isal_zlib import crc32_combine as crc32_combine

ALGORITHM = "crc32"
CHUNK_BYTES = 8 << 20


def file_checksum(fs: Any, path: str) -> str:
    """The CRC-32 of one file, as 8 hex digits, read through ``fs`` in chunks."""
    crc = 0
    with fs.open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            crc = crc32(chunk, crc)
    return f"{crc:08x}"
