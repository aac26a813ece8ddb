"""Named points where crash-consistency tests kill the job: inert unless BEAM_PIPELINE_KILL_AT names one.

``BEAM_PIPELINE_KILL_AT=<point>[:<signal>]`` (signal SIGKILL by default, or SIGTERM; SIGSTOP pauses it) makes the
process that reaches ``<point>`` signal itself there, so a test can stop a real run at an exact step instead of racing
a timer;
``<point>:raise`` fails the job there with an exception instead (a failed rather than a killed run).
The points are the steps of publishing a run (see beam_pipeline.fileio.outputs).
"""

from __future__ import annotations

import os
import signal

ENV = "BEAM_PIPELINE_KILL_AT"
POINTS = ("shard_written", "before_metadata", "metadata_written", "previous_marked", "latest_staged", "published",
          "removed_marker")


class FailpointError(RuntimeError):
    pass


def reached(point: str) -> None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return
    name, _, signame = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown point, one of {', '.join(POINTS)}")
    if name == point and signame == "raise":
        raise FailpointError(f"{ENV}={spec}")
    if name == point:
        os.kill(os.getpid(), getattr(signal, signame or "SIGKILL"))
