"""Where image bytes come from. Pluggable so a requester-pays GCS reader can replace Beam's FileSystems."""

from __future__ import annotations

from typing import Protocol

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


class ByteSource(Protocol):
    def read(self, path: str) -> bytes:
        """The whole object; raise FileNotFoundError when it does not exist."""


class FileSystemsSource:
    """Local paths and gs:// through Beam's FileSystems: one whole read per image, nothing cached."""

    def read(self, path: str) -> bytes:
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except Exception:  # filesystems differ in how they say "not found"; anything else is retried by Beam
            if not FileSystems.exists(path):
                raise FileNotFoundError(path) from None
            raise
