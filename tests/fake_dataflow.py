"""A small fake of the Dataflow v1b3 REST API on a loopback port, for submitting with ``--runner=DataflowRunner``.

Beam 2.77's Dataflow client (google-cloud-dataflow-client's REST transport, chosen by Beam whenever
``--dataflow_endpoint`` contains ``localhost``) makes these calls on submission and afterwards:

* ``POST /v1b3/projects/P/locations/R/jobs`` (jobs.create): the Job JSON. The service answers with the same job
  plus the fields it owns: ``id``, ``projectId``, ``location``, ``currentState``, ``createTime``... Beam compares the
  answer's ``clientRequestId`` with its own to detect "a job of that name is already running", so it is echoed.
* ``GET /v1b3/projects/P/locations/R/jobs/ID`` (jobs.get): polled by ``wait_until_finish`` and by ``state``.
* ``GET .../jobs/ID/messages`` (messages.list): polled alongside jobs.get while waiting.
* ``GET .../jobs/ID/metrics`` (metrics.get): ``result.metrics()``.
* ``PUT .../jobs/ID`` (jobs.update): ``result.cancel()``.

Every request is recorded (method, path, query, parsed JSON body). Anything else is recorded too and answered with
a 404 in Google's error format, so a test sees a call the fake does not know instead of a silent success. The
client asks for integer enums (``$alt=json;enum-encoding=int``); the fake answers in the encoding asked for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

JOB_STATES = ("JOB_STATE_UNKNOWN", "JOB_STATE_STOPPED", "JOB_STATE_RUNNING", "JOB_STATE_DONE", "JOB_STATE_FAILED",
              "JOB_STATE_CANCELLED", "JOB_STATE_UPDATED", "JOB_STATE_DRAINING", "JOB_STATE_DRAINED",
              "JOB_STATE_PENDING", "JOB_STATE_CANCELLING", "JOB_STATE_QUEUED", "JOB_STATE_RESOURCE_CLEANING_UP")
_JOBS = re.compile(r"^/v1b3/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/jobs"
                   r"(?:/(?P<job>[^/:]+)(?P<rest>/messages|/metrics)?)?$")


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None
    known: bool = True  # False: the fake has no such call and answered 404


class FakeDataflow:
    """``with FakeDataflow() as api``: serves on ``api.endpoint`` (http://localhost:PORT) until the block ends.

    ``api.requests`` lists every request; ``api.jobs`` maps job id -> the job as the service stores it;
    ``api.final_state`` is what jobs.get reports (the state a polling client sees)."""

    def __init__(self, final_state: str = "JOB_STATE_RUNNING"):
        self.requests: list[Request] = []
        self.jobs: dict[str, dict] = {}
        self.final_state = final_state
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://localhost:{self.port}"  # Beam's validator refuses http://127.0.0.1:PORT
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-dataflow", daemon=True)

    def __enter__(self) -> "FakeDataflow":
        self._thread.start()  # serve_forever answers as soon as the listening socket (already bound) is polled
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def unknown(self) -> list[Request]:
        return [r for r in self.requests if not r.known]

    def calls(self, method: str, suffix: str = "") -> list[Request]:
        return [r for r in self.requests if r.known and r.method == method and r.path.endswith(suffix)]

    # -- the service's side ------------------------------------------------------------------------------------

    def _create(self, project: str, location: str, job: dict) -> dict:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        job_id = f"{dt.date.today():%Y-%m-%d}_00_00_00-{next(self._ids)}"
        stored = {**job, "id": job_id, "projectId": project, "location": location, "createTime": now,
                  "currentState": "JOB_STATE_QUEUED", "currentStateTime": now, "startTime": now}
        self.jobs[job_id] = stored
        return stored

    def _get(self, job_id: str) -> dict | None:
        job = self.jobs.get(job_id)
        return None if job is None else {**job, "currentState": self.final_state}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict, int_enums: bool) -> None:
                if int_enums and isinstance(payload.get("currentState"), str):
                    payload = {**payload, "currentState": JOB_STATES.index(payload["currentState"])}
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, reason: str, message: str) -> None:
                self._send(status, {"error": {"code": status, "status": reason, "message": message}}, False)

            def _serve(self):
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = {"unparsed": raw.decode("utf-8", "replace")}
                request = Request(self.command, url.path, query, body)
                int_enums = "enum-encoding=int" in " ".join(query.get("$alt", []))
                match = _JOBS.match(url.path)
                with fake._lock:
                    fake.requests.append(request)
                    if match and self.command == "POST" and not match["job"]:
                        return self._send(200, fake._create(match["project"], match["location"], body or {}),
                                          int_enums)
                    if match and match["job"] and self.command == "GET" and not match["rest"]:
                        job = fake._get(match["job"])
                        if job is None:
                            return self._error(404, "NOT_FOUND", f"job {match['job']} not found")
                        return self._send(200, job, int_enums)
                    if match and match["job"] and self.command == "GET" and match["rest"] == "/messages":
                        return self._send(200, {"jobMessages": []}, int_enums)
                    if match and match["job"] and self.command == "GET" and match["rest"] == "/metrics":
                        return self._send(200, {"metrics": []}, int_enums)
                    if match and match["job"] and self.command == "PUT" and not match["rest"]:
                        job = fake.jobs.get(match["job"])
                        if job is None:
                            return self._error(404, "NOT_FOUND", f"job {match['job']} not found")
                        job.update(body or {})
                        return self._send(200, job, int_enums)
                    request.known = False
                return self._error(404, "NOT_FOUND", f"the fake Dataflow API has no {self.command} {url.path}")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler
