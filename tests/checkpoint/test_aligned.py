"""The aligning writer's streams: what DCP fsyncs is every byte written so far."""

from __future__ import annotations

import os
from pathlib import Path

from tidemill.checkpoint._aligned import AlignedFileSystemWriter


def test_the_descriptor_dcp_fsyncs_covers_every_byte_written(tmp_path: Path) -> None:
    """DCP calls ``os.fsync(stream.fileno())`` before it closes a data file: a buffered
    tail left out of the file then would not be durable when the manifest is."""
    writer = AlignedFileSystemWriter(str(tmp_path))
    path = tmp_path / "__0_0.distcp"
    with writer.fs.create_stream(path, "wb") as stream:
        stream.write(b"x" * 100)
        stream.tell()
        stream.tell()
        stream.write(b"y" * 3)
        os.fsync(stream.fileno())
        assert path.read_bytes() == b"x" * 100 + b"\0" * 28 + b"y" * 3
    assert writer.written["__0_0.distcp"][1] == 131
