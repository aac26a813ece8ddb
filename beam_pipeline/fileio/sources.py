"""Where input bytes come from: Beam's FileSystems, or the GCS client with a billing project for requester-pays
buckets (PhysioNet's ``mimic-cxr-jpg-2.1.0.physionet.org``).

Beam's own GCS layer cannot send a billing project (``userProject``), so with ``--billing_project`` every ``gs://``
input (CSV tables, JPEGs) is read through google-cloud-storage with ``user_project`` set: whole objects for images,
streamed ranged reads for tables (a 3-million-row table is never held in memory). Clients are created once per
worker process; reads retry with exponential backoff on 408/429/5xx and dropped connections (the client library's
default policy, capped at 5 minutes). Outputs always go through Beam's FileSystems (they are in the user's bucket).
A bucket that refuses a read for lack of a billing project gives one clear error naming the bucket and the flag.
Any other failure to read one object is an OSError whatever the storage (FileNotFoundError when it is missing,
PermissionError for HTTP 401/403), so callers can reject that input and go on.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from typing import IO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.api_core import exceptions as api_errors
from google.cloud.storage.exceptions import DataCorruption

READ_CHUNK = 8 * 2 ** 20
RETRY_DEADLINE_SECONDS = 300.0
_CLIENTS: dict[str, object] = {}
_LOCK = threading.Lock()


class RequesterPaysError(RuntimeError):
    pass


def _requester_pays_hint(path: str, err: Exception) -> RequesterPaysError | None:
    """Turn GCS's refusal of an unbilled read (400 'requester pays', 403 'userProject' / serviceusage) into advice.
    The request URL is left out of the error's text: its userProject parameter would make every refusal of a
    billed read look like this one."""
    text = re.sub(r"https?://\S+", "<url>", str(err))
    if "requester pays" not in text.lower() and "userproject" not in text.lower() and \
            "serviceusage.services.use" not in text:
        return None
    bucket = path[len("gs://"):].split("/", 1)[0]
    return RequesterPaysError(
        f"gs://{bucket} is a requester-pays bucket and refused the read ({text.strip().splitlines()[0][:200]}). "
        f"Pass --billing_project=YOUR_PROJECT (or --project): that project is billed, and the account running the "
        f"job needs serviceusage.services.use on it (role Service Usage Consumer) and PhysioNet access to the bucket.")


def _unreadable(path: str, err: Exception) -> OSError:
    """A storage client's failure to read one object (after its retries) as the OSError a local read would raise
    (PermissionError for HTTP 401/403), so callers treat gs:// and local paths alike; the message is the client's
    error class and HTTP code."""
    code = getattr(err, "code", None)
    return OSError(errno.EACCES if code in (401, 403) else errno.EIO, f"{type(err).__name__} {code or ''}".strip(),
                   path)


class BeamSource:
    """Inputs through Beam's FileSystems (local paths, gs:// without a billing project)."""

    def exists(self, path: str) -> bool:
        try:
            return FileSystems.exists(path)
        except Exception as err:
            raise _requester_pays_hint(path, err) or err

    def open(self, path: str) -> IO[bytes]:
        try:
            return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as err:
            raise _requester_pays_hint(path, err) or err

    def read(self, path: str) -> bytes:
        """The whole object. Raises FileNotFoundError when it does not exist, RequesterPaysError when its bucket
        wants a billing project, and another OSError when it cannot be read (a directory or no permission at the
        path, an I/O error, a storage error the client's retries did not cure)."""
        try:
            with self.open(path) as f:
                return f.read()
        except api_errors.NotFound:  # Beam's GCS layer raises the client library's errors
            raise FileNotFoundError(path) from None
        except (api_errors.GoogleAPIError, DataCorruption) as err:
            raise _unreadable(path, err) from err


class RequesterPaysSource(BeamSource):
    """gs:// through google-cloud-storage billed to ``billing_project``; other paths as BeamSource."""

    def __init__(self, billing_project: str):
        self.billing_project = billing_project

    def _client(self):
        with _LOCK:
            if self.billing_project not in _CLIENTS:
                from google.cloud import storage

                # The client's background bucket-metadata lookup (for telemetry) sends no userProject, so on a
                # requester-pays bucket it only earns a 400 per bucket: switch it off.
                os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
                _CLIENTS[self.billing_project] = storage.Client(project=self.billing_project)
            return _CLIENTS[self.billing_project]

    def _blob(self, path: str):
        bucket, _, name = path[len("gs://"):].partition("/")
        return self._client().bucket(bucket, user_project=self.billing_project).blob(name)

    @staticmethod
    def _retry():
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_SECONDS)

    def _call(self, path: str, action):
        try:
            return action()
        except api_errors.NotFound:
            raise FileNotFoundError(path) from None
        except (api_errors.GoogleAPIError, DataCorruption) as err:
            raise (_requester_pays_hint(path, err) or _unreadable(path, err)) from err

    def exists(self, path: str) -> bool:
        if not path.startswith("gs://"):
            return super().exists(path)
        return self._call(path, lambda: self._blob(path).exists(retry=self._retry()))

    def open(self, path: str) -> IO[bytes]:
        if not path.startswith("gs://"):
            return super().open(path)
        return self._call(path, lambda: self._blob(path).open("rb", chunk_size=READ_CHUNK, retry=self._retry()))

    def read(self, path: str) -> bytes:
        if not path.startswith("gs://"):
            return super().read(path)
        return self._call(path, lambda: self._blob(path).download_as_bytes(retry=self._retry()))


def make_source(billing_project: str) -> BeamSource:
    return RequesterPaysSource(billing_project) if billing_project else BeamSource()
