"""File checksums: taken after a checkpoint is written, verified before it is loaded.

CRC-32 (zlib), chosen by measurement on the 2-core development machine, reading a
512 MiB file from the page cache in 8 MiB chunks: read alone 5.8 GB/s, zlib.crc32
1.9 GB/s, sha1 1.2, sha256 1.1 (SHA-NI), blake2b 0.64, md5 0.53; torch.load of the
same bytes 1.1 GB/s. Restore has to read and verify every byte, and should take no
longer than a plain ``torch.load``, so the cheapest check that catches torn, truncated
and bit-flipped files wins; CRC-32 does not defend against deliberate tampering, which
is not what a checkpoint checksum is for.
"""

from __future__ import annotations

import zlib
from typing import Any

ALGORITHM = "crc32"
CHUNK_BYTES = 8 << 20


def file_checksum(fs: Any, path: str) -> str:
    """The CRC-32 of one file, as 8 hex digits, read through ``fs`` in chunks."""
    crc = 0
    with fs.open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"
