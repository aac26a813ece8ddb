"""Where input bytes come from: Beam's FileSystems for local paths, the GCS client for ``gs://``, with a billing
project for requester-pays buckets (PhysioNet's ``mimic-cxr-jpg-2.1.0.physionet.org``).

Beam's own GCS layer cannot send a billing project (``userProject``), so with ``--billing_project`` every ``gs://``
input (CSV tables, JPEGs) is read through google-cloud-storage with ``user_project`` set; without one, through Beam's
storage client (its credentials). Either way: whole objects for images, streamed ranged reads for tables (a
3-million-row table is never held in memory), bytes as stored (``raw_download``: never decompressed in transit), one
client per worker process. Reads retry with exponential backoff on 408/429/5xx and dropped connections (the client
library's default policy, for up to RETRY_DEADLINE_SECONDS). Outputs always go through Beam's FileSystems.

Errors, for every request, streamed reads included:
- a bucket that refuses a read for its billing (no billing project on a requester-pays bucket, a wrong or unbilled
  one) gives RequesterPaysError naming the bucket, GCS's reason and the flag; so does any refusal of a billed
  existence check (at launch: the job cannot see its inputs);
- storage still failing with transient errors once the retries run out, or a download whose checksum does not
  match, gives StorageUnavailableError, not an OSError: the input is not at fault, so the bundle fails and the runner
  retries it rather than the run going on without that input;
- any other failure to read one object is an OSError whatever the storage (FileNotFoundError when it is missing,
  PermissionError for HTTP 401/403) carrying GCS's reason, so callers can reject that input and go on.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import threading
from typing import IO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.api_core import exceptions as api_errors
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

READ_CHUNK = 8 * 2 ** 20
# The retry policy's overall deadline and first backoff (the client library's defaults: 1 s, doubling up to 60 s);
# read at each request, so tests shorten both.
RETRY_DEADLINE_SECONDS = 300.0
RETRY_FIRST_DELAY_SECONDS = 1.0
_TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})  # the ones the client library retries
_REASON_CHARS = 200
_BILLING_WORDS = ("requester pays", "userproject", "user project", "billing account", "serviceusage.services.use")
_REQUEST = re.compile(r"\s*(?:(?:GET|HEAD|POST|PUT|PATCH|DELETE)\s+)?https?://\S+?(?=:?(?:\s|$))")
_CLIENTS: dict[str | None, object] = {}  # billing project (None: Beam's client) -> storage client, per process
_LOCK = threading.Lock()


class RequesterPaysError(RuntimeError):
    """GCS refused a request for its billing (or a billed existence check at all): every read of the bucket would
    fail the same way, so the job stops naming the flag."""


class StorageUnavailableError(Exception):
    """Storage kept failing with transient errors until the retry deadline: not the input's fault, so not an OSError
    (which callers turn into a reject) nor a RuntimeError (which the zip reader takes for a damaged member). The
    bundle fails and the runner retries it; a local run stops rather than publish without that input."""


def _reason(err: Exception) -> str:
    """GCS's explanation (first line, request URLs left out, capped): it says what to fix and holds no row data."""
    if isinstance(err, api_errors.RetryError) and err.cause is not None:
        return f"{err.message}, last error {_describe(err.cause)}"
    text = _server_message(err) or (err.message if isinstance(err, api_errors.GoogleAPICallError) else str(err))
    lines = _REQUEST.sub("", str(text)).strip().lstrip(":").strip().splitlines()
    return lines[0][:_REASON_CHARS] if lines else ""


def _server_message(err: Exception) -> str | None:
    """The message of GCS's JSON error body, when the error kept the response: a failed object read carries the
    whole body and the client's own complaint in its text instead."""
    try:
        return str(err.response.json()["error"]["message"])
    except Exception:  # no response, not JSON, not GCS's shape: the error's text will do
        return None


def _describe(err: Exception) -> str:
    """The error's class, HTTP code and GCS's reason: ``Forbidden 403: ... does not have storage.objects.get ...``."""
    label = f"{type(err).__name__} {_status(err) or ''}".strip()
    reason = _reason(err)
    return f"{label}: {reason}" if reason else label


def _status(err: Exception) -> int | None:
    """The HTTP status of an API error, or of the media layer's InvalidResponse (what a retried read last got)."""
    return err.response.status_code if isinstance(err, InvalidResponse) else getattr(err, "code", None)


def _bucket_of(path: str) -> str:
    return path[len("gs://"):].split("/", 1)[0]


def _refused(path: str, what: str, reason: str, billing_project: str) -> RequesterPaysError:
    """The advice for a request refused for its billing: what to pass, or what to check in what was passed."""
    bucket = f"gs://{_bucket_of(path)}"
    if not billing_project:
        return RequesterPaysError(
            f"{bucket} is a requester-pays bucket and refused the {what} ({reason}). Pass "
            f"--billing_project=YOUR_PROJECT (or --project): that project is billed, and the account running the job "
            f"needs serviceusage.services.use on it (role Service Usage Consumer) and PhysioNet access to the bucket.")
    return RequesterPaysError(
        f"{bucket} refused the {what} billed to project {billing_project} ({reason}). Check "
        f"--billing_project={billing_project} (it defaults to --project): it must be an existing project with billing "
        f"enabled on which the account running the job has serviceusage.services.use (role Service Usage Consumer), "
        f"and the account needs read access to the bucket (PhysioNet access).")


def _requester_pays_hint(path: str, err: Exception, billing_project: str = "") -> RequesterPaysError | None:
    """Turn a refusal for billing (400 'requester pays' or 'User project ... invalid', 403 'billing account' or
    serviceusage) into advice. The request URL is left out of the text matched: its userProject parameter would
    make every refusal of a billed read look like this one."""
    text = _REQUEST.sub(" ", str(err)).lower()
    if not any(words in text for words in _BILLING_WORDS):
        return None
    return _refused(path, "read", _reason(err), billing_project)


def _unreadable(path: str, err: Exception) -> OSError:
    """A storage client's failure to read one object as the OSError a local read would raise (PermissionError for
    HTTP 401/403), so callers treat gs:// and local paths alike."""
    return OSError(errno.EACCES if _status(err) in (401, 403) else errno.EIO, _describe(err), path)


def _storage_error(path: str, err: Exception, billing_project: str) -> Exception:
    if hint := _requester_pays_hint(path, err, billing_project):
        return hint
    # A checksum mismatch is the download's fault, not the object's, and the client does not retry it.
    if isinstance(err, (api_errors.RetryError, DataCorruption)) or _status(err) in _TRANSIENT_CODES:
        return StorageUnavailableError(
            f"{path}: storage unavailable after retrying for up to {RETRY_DEADLINE_SECONDS:g} s ({_describe(err)}); "
            f"the job stops rather than go on without this input (Dataflow retries the work item; run a local job "
            f"again later)")
    return _unreadable(path, err)


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_SECONDS).with_delay(initial=RETRY_FIRST_DELAY_SECONDS)


def _cached_client(key: str | None, make):
    with _LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = make()
        return _CLIENTS[key]


class _MappedReader(io.RawIOBase):
    """A gs:// object's reader whose requests go through the source's error mapping: its ranged GETs are made while
    the caller reads (and a seek may look the object up), long after ``open`` returned."""

    def __init__(self, reader: IO[bytes], call):
        self._reader = reader
        self._call = call

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._call(lambda: self._reader.read(len(buffer)))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self._call(self._reader.read)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._call(lambda: self._reader.seek(offset, whence))

    def close(self) -> None:
        self._reader.close()
        super().close()


class BeamSource:
    """Inputs without a billing project: gs:// through Beam's storage client, other paths through FileSystems."""

    billing_project = ""

    def _bucket(self, name: str):
        # Made once per process, as Beam makes it (its credentials; anonymous without any): Beam's FileSystems would
        # make a new client, and a new connection, for every image.
        return _cached_client(None, lambda: FileSystems.get_filesystem("gs://b/o")._gcsIO().client).bucket(name)

    def _blob(self, path: str):
        bucket, _, name = path[len("gs://"):].partition("/")
        return self._bucket(bucket).blob(name)

    def _call(self, path: str, action):
        """Run ``action`` (requests for ``path``); a storage error becomes the one the module docstring names."""
        try:
            return action()
        except api_errors.NotFound:
            raise FileNotFoundError(errno.ENOENT, "No such object", path) from None
        except (api_errors.GoogleAPIError, DataCorruption) as err:
            raise _storage_error(path, err, self.billing_project) from err

    def exists(self, path: str) -> bool:
        if not path.startswith("gs://"):
            return FileSystems.exists(path)
        return self._call(path, lambda: self._blob(path).exists(retry=_retry()))

    def open(self, path: str) -> IO[bytes]:
        if not path.startswith("gs://"):
            return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        # raw_download, as Beam's own reader: an object stored with Content-Encoding: gzip is read as stored (its
        # bytes and sha256 are the object's), never decompressed in transit, which ranged reads cannot survive.
        reader = self._blob(path).open("rb", chunk_size=READ_CHUNK, retry=_retry(), raw_download=True)
        return _MappedReader(reader, functools.partial(self._call, path))

    def read(self, path: str) -> bytes:
        """The whole object. Raises FileNotFoundError when it does not exist, RequesterPaysError when its bucket
        refuses it for billing, StorageUnavailableError when storage kept failing, and another OSError when it
        cannot be read (a directory or no permission at the path, an I/O error, a refusal by GCS)."""
        if not path.startswith("gs://"):
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return f.read()
        return self._call(path, lambda: self._blob(path).download_as_bytes(raw_download=True, retry=_retry()))


class RequesterPaysSource(BeamSource):
    """gs:// through google-cloud-storage billed to ``billing_project``; other paths as BeamSource."""

    def __init__(self, billing_project: str):
        self.billing_project = billing_project

    def _make_client(self):
        from google.cloud import storage

        # The client's background bucket-metadata lookup (for telemetry) sends no userProject, so on a
        # requester-pays bucket it only earns a 400 per bucket: switch it off.
        os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
        return storage.Client(project=self.billing_project)

    def _bucket(self, name: str):
        client = _cached_client(self.billing_project, self._make_client)
        return client.bucket(name, user_project=self.billing_project)

    def exists(self, path: str) -> bool:
        """Also RequesterPaysError when GCS refuses the billed check for any reason (a wrong billing project, billing
        disabled, no access to the bucket): it is the launch's first request, and no input could be read."""
        try:
            return super().exists(path)
        except OSError as err:
            if not path.startswith("gs://"):
                raise
            raise _refused(path, f"existence check of {path}", err.strerror, self.billing_project) from err


def make_source(billing_project: str) -> BeamSource:
    return RequesterPaysSource(billing_project) if billing_project else BeamSource()
