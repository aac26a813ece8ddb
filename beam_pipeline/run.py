"""Command line: ``python -m beam_pipeline.run --mimic_cxr_root=... --mimic_ed_root=... --output=... [Beam flags]``.

Pipeline flags are ours (``--help`` lists them); anything else goes to Beam (``--runner``, ``--project``, ...), and
a flag neither knows is an error rather than silently dropped. Without ``--runner`` (or with any of Beam's local
runners: direct, DirectRunner, PrismRunner, ...) the job runs on Beam's in-process FnApiRunner, which never tries to
download the Prism runner; it then waits, and prints where the output is and the stage funnel (exit status 1, naming
the stage, when the run wrote no records). On other runners (Dataflow) it submits, prints the job id, its console
link and the run folder on stderr, and returns without blocking, as Flex Templates require. Flags, the output and
(for a remote job) that no input is a local path are checked before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import re
import sys

import apache_beam as beam
from apache_beam.runners.runner import PipelineResult
from apache_beam.options.pipeline_options import (DirectOptions, GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from beam_pipeline import accounting, cohorts, local_workers, report
from beam_pipeline.fileio.csv_tables import InputError
from beam_pipeline.fileio.metadata import CountsError
from beam_pipeline.fileio.outputs import OutputError, check_output, run_folder
from beam_pipeline.fileio.sharded import DuplicateKeyError
from beam_pipeline.fileio.sources import RequesterPaysError, StorageUnavailableError
from beam_pipeline.options import Config, add_arguments, make_config
from beam_pipeline.pipeline import (build_pipeline, check_remote_inputs, index_for_remote_workers, resolve_inputs,
                                    resolve_text)
from beam_pipeline.readers.common import load_metadata
from beam_pipeline.staging import StagingError, stage_package
from beam_pipeline.transforms.split import PatientOverlapError

LOCAL_RUNNERS = {name.lower() for name in StandardOptions.LOCAL_RUNNERS}  # Beam's own list: DirectRunner, Prism...
# Errors that mean "the input, the setup or the storage is wrong", not "the code is wrong": the CLI prints their
# message alone.
JOB_ERRORS = (InputError, OutputError, RequesterPaysError, StorageUnavailableError, StagingError, PatientOverlapError,
              DuplicateKeyError, CountsError)
# A worker process's error reaches the runner as text: "...module.Class: message [while running 'Step']".
_WORKER_ERROR = re.compile(r"\b(?:%s): (.+?)(?: \[while running '[^']*'\])?$" % "|".join(
    e.__name__ for e in JOB_ERRORS), re.MULTILINE)


def parse(argv: list[str]) -> tuple[Config, PipelineOptions]:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.run", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    stray = [t for i, t in enumerate(beam_args)  # a word no flag takes (Beam would only log that it dropped it)
             if not t.startswith("-") and (i == 0 or not beam_args[i - 1].startswith("-") or "=" in beam_args[i - 1])]
    if stray:
        parser.error(f"unexpected arguments: {' '.join(stray)} (a list takes one comma-separated value: "
                     "--views=AP,PA)")
    options = PipelineOptions(beam_args)
    if is_local(options):
        options = PipelineOptions(beam_args + local_parallelism(options, beam_args))
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
    if unknown:
        parser.error("unknown flags: " + ", ".join("--" + name for name in unknown))
    values = {k: v for k, v in vars(args).items() if v is not None}
    values.setdefault("billing_project", options.view_as(GoogleCloudOptions).project or "")
    try:
        config = make_config(values)
    except ValueError as err:
        parser.error(str(err))
    return config, options


def local_worker_count() -> int:
    """One worker process per usable core, as many as fit in memory (``local_workers``); says so when memory caps it."""
    workers, cores, memory = local_workers.machine()
    if workers < cores:
        logging.getLogger(__name__).info(
            "%d worker processes, not %d (one per core): %.1f GB of memory available, about %.1f GB per worker "
            "beside the runner; --direct_num_workers=N sets the number", workers, cores, memory / 2**30,
            local_workers.WORKER_BYTES / 2**30)
    return workers


def local_parallelism(options: PipelineOptions, beam_args: list[str]) -> list[str]:
    """Flags that give a local run ``local_worker_count()`` worker processes, unless the user set the number or the
    mode.
    ``--direct_num_workers=N`` alone gives N worker processes (Beam's own default mode would run N threads in one
    process, and warns that it should not); ``--direct_num_workers=1`` is one in-process worker; ``0``, Beam's "one
    per core", is one per core this job may use (Beam would count the host's cores, however few a container gets)."""
    given = {arg.split("=", 1)[0] for arg in beam_args}  # which flags were passed; Beam parsed their values
    count = options.view_as(DirectOptions).direct_num_workers
    if "--direct_num_workers" not in given:
        if "--direct_running_mode" in given:
            return []
        count = local_worker_count()
    elif count == 0:
        count = local_workers.machine()[1]
    flags = [f"--direct_num_workers={count}"]
    if count > 1 and "--direct_running_mode" not in given:
        flags.append("--direct_running_mode=multi_processing")
    return flags


def is_local(options: PipelineOptions) -> bool:
    """No --runner, or a name Beam resolves to one of its local runners: it resolves case-insensitively, with or
    without "Runner" or the module path (apache_beam.runners.runner.create_runner), so --runner=direct is one too."""
    runner = options.view_as(StandardOptions).runner
    name = runner.rsplit(".", 1)[-1].lower() if runner else ""
    return not name or name in LOCAL_RUNNERS or name + "runner" in LOCAL_RUNNERS


def in_run_folder(config: Config, now: dt.datetime) -> Config:
    """The config with --output replaced by this run's own new folder, OUTPUT/runs/<UTC start time>."""
    return dataclasses.replace(config, output=run_folder(config.output, now))


def execute(config: Config, options: PipelineOptions, started: dt.datetime | None = None) -> PipelineResult:
    """Check output, inputs and models, build the graph and start it (local runs on the in-process FnApiRunner).
    The output goes first: one small write, and nothing else (not even the inputs) is read when it fails; only a
    remote job's local input paths are refused before it, as they need no I/O. The run folder is named by ``started``
    (default: now)."""
    local = is_local(options)
    if not local:
        check_remote_inputs(config)
    check_output(config.output, config.overwrite or config.keep_runs, local_workers=local)
    paths = resolve_inputs(config)
    text = resolve_text(config)
    base, config = config.output, in_run_folder(config, started or dt.datetime.now(dt.timezone.utc))
    runner = local_workers.LocalRunner() if local else options.view_as(StandardOptions).runner
    if not local:
        cloud = options.view_as(GoogleCloudOptions)
        text = index_for_remote_workers(text, cloud.temp_location or cloud.staging_location)
        stage_package(options)  # workers install this exact code (beam_pipeline/staging.py)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, config, paths, text, base, fail_when_empty=not local)
    accounting.reset_progress()
    return pipeline.run()


def submitted(result: PipelineResult, options: PipelineOptions, folder: str) -> str:
    """Where a remote job can be followed: Beam logs its id and console link only at INFO, which main() hides."""
    lines = [f"Run folder: {folder} (published as LATEST once complete)"]
    if getattr(result, "has_job", False):  # a Dataflow job (a --template_location run creates none)
        cloud = options.view_as(GoogleCloudOptions)
        lines.insert(0, f"Submitted Dataflow job {result.job_id()}: https://console.cloud.google.com/dataflow/jobs/"
                        f"{cloud.region}/{result.job_id()}?project={cloud.project}")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict | None:
    """Run the job; locally wait and return its run's metadata.json (``counts["matched"] == 0``: it wrote no records
    and was not published), remotely print where to follow it (stderr) and return None once submitted (there an
    empty run fails the job)."""
    config, options = parse(sys.argv[1:] if argv is None else argv)
    started = dt.datetime.now(dt.timezone.utc)
    result = execute(config, options, started)
    if not is_local(options):
        print(submitted(result, options, run_folder(config.output, started)), file=sys.stderr)
        return None
    result.wait_until_finish()
    return load_metadata(run_folder(config.output, started))


def job_error(err: BaseException) -> str | None:
    """The message of a JOB_ERRORS error, raised here or in a worker process (whose error Beam re-raises as text
    inside its own traceback); None for anything else, which keeps its traceback."""
    if isinstance(err, JOB_ERRORS):
        return str(err)
    found = _WORKER_ERROR.findall(str(err))
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("beam_pipeline").setLevel(logging.INFO)  # our progress lines; Beam stays at WARNING
    # Every local worker process warns once that it has no semi-persistent directory (a Dataflow-only feature).
    logging.getLogger("apache_beam.runners.portability.local_job_service").addFilter(
        lambda record: "No semi_persistent_directory found" not in record.getMessage())
    try:
        metadata = run(argv)
    except Exception as err:
        message = job_error(err)
        if message is None:
            raise
        sys.exit(f"error: {message}")
    if metadata is None:
        return
    config, counts = metadata["config"], metadata["counts"]
    cohort = cohorts.get(config["cohort"])
    print(f"Output: {config['output']}")
    print(cohort.funnel(counts, config))
    if not counts["matched"]:
        sys.exit(f"error: {cohort.empty_message(metadata)}")
    print(f"Report: {report.build(config['output'])}")


if __name__ == "__main__":
    main()
    local_workers.end_process()  # a second or two sooner than the interpreter's own tear-down
