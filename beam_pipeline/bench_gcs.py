"""``make bench``, reading from GCS: the TFRecord writer's image work when every JPEG is an object read with storage
latency, with and without read-ahead (``--image_read_ahead``).

The writer (``WriteExamples`` in Beam's in-process runner, one worker: what one core of a Dataflow worker does)
preprocesses N records whose JPEGs are objects in the GCS emulator, read through the billed client
(``RequesterPaysSource``, the path a build from PhysioNet's bucket takes), with the emulator's proxy holding every
object read for a fixed time to first byte (``--latency_ms``; GCS's is tens of milliseconds), each with read-ahead 0
(each image read in turn, the writer before 2026-11-30) and 8 (the default); and, for reference, from local files.
The emulator and the proxy run in a child process, so their CPU is not the writer's. Reported per configuration:
images per wall second, CPU milliseconds per image (this process, all threads: the client's HTTP and checksum work
included), and the wall rate as a share of the local-file run's. Offline: everything is on loopback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from beam_pipeline import bench, gcs_emulator, sample
from beam_pipeline.fileio.sources import RequesterPaysSource
from beam_pipeline.transforms.images import ImageLoader, ImageSettings

BUCKET = "bench-images"
PREFIX = "cxr"


def serve() -> None:
    """Child: the emulator and its proxy; prints the proxy's port, then takes ``delay <seconds>`` lines on stdin
    (each answered ``ok``) until stdin closes."""
    server, proxy = gcs_emulator.start()
    print(json.dumps({"port": proxy.port}), flush=True)
    try:
        for line in sys.stdin:
            command, _, value = line.strip().partition(" ")
            if command == "delay":
                proxy.delay_s = float(value)
            print("ok", flush=True)
    finally:
        proxy.stop()
        server.stop()


class EmulatorProcess:
    """The ``serve`` child, driven over its stdin."""

    def __init__(self):
        self._child = subprocess.Popen([sys.executable, "-m", "beam_pipeline.bench_gcs", "--serve"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = json.loads(self._child.stdout.readline())["port"]

    def delay(self, seconds: float) -> None:
        self._child.stdin.write(f"delay {seconds}\n")
        self._child.stdin.flush()
        if self._child.stdout.readline().strip() != "ok":
            raise RuntimeError("the emulator process did not take the latency")

    def stop(self) -> None:
        self._child.stdin.close()
        self._child.wait(timeout=60)


def upload(pool: list[Path]) -> None:
    from google.cloud import storage

    client = storage.Client()
    bucket = client.create_bucket(BUCKET)
    for path in pool:
        bucket.blob(f"{PREFIX}/{path.name}").upload_from_filename(str(path))


def records_on(pool: list[Path], root: Path, n: int):
    """n benchmark records whose image paths are the pool files' names, round-robin: an object under PREFIX on
    GCS, a symlink under ``root`` locally."""
    root.mkdir(parents=True, exist_ok=True)
    for path in pool:
        link = root / path.name
        if not link.exists():
            link.symlink_to(path)
    return [bench.record(i, pool[i % len(pool)].name) for i in range(n)]


def measure(items, loader: ImageLoader, settings: ImageSettings, output: Path) -> dict:
    """One writer run; the rates and a digest of every file it wrote (the same in every configuration)."""
    shutil.rmtree(output, ignore_errors=True)
    wall, cpu = bench.write_examples(items, loader, settings, output)
    files = hashlib.sha256()
    for path in sorted(output.rglob("*.tfrecord")):
        files.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return {"images_per_s": len(items) / wall, "cpu_ms_per_image": 1000 * cpu / len(items), "wall_s": wall,
            "files_sha256": files.hexdigest()}


def run(workdir: Path, n: int, pool_size: int, latencies_ms: list[float], read_aheads: list[int],
        settings: ImageSettings) -> dict:
    pool = bench.make_pool(workdir / f"pool-v{sample.RADIOGRAPH_VERSION}", pool_size)
    local_root = workdir / "gcs-bench" / "local"
    items = records_on(pool, local_root, n)
    results = {"local": measure(items, ImageLoader(str(local_root), settings, read_ahead=0), settings,
                                workdir / "gcs-bench" / "out")}
    emulator = EmulatorProcess()
    try:
        os.environ.update(gcs_emulator.client_environment(emulator.port))
        upload(pool)
        source = RequesterPaysSource("bench-billing")
        for latency in latencies_ms:
            emulator.delay(latency / 1000)
            for ahead in read_aheads:
                loader = ImageLoader(f"gs://{BUCKET}/{PREFIX}", settings, source, read_ahead=ahead)
                results[f"gcs {latency:g} ms, read-ahead {ahead}"] = measure(items, loader, settings,
                                                                              workdir / "gcs-bench" / "out")
    finally:
        emulator.stop()
    return {"n": n, "mean_jpeg_mb": sum(p.stat().st_size for p in pool) / len(pool) / 2 ** 20, "runs": results,
            "identical_files": len({r["files_sha256"] for r in results.values()}) == 1}


def report(summary: dict) -> None:
    local = summary["runs"]["local"]["images_per_s"]
    print(f"image stage reading from GCS (emulator on loopback, latency added per object read): {summary['n']} "
          f"records, MIMIC-size JPEGs (mean {summary['mean_jpeg_mb']:.2f} MB), one in-process worker")
    for name, r in summary["runs"].items():
        print(f"  {name:<28} {r['images_per_s']:6.1f} images/s   {r['cpu_ms_per_image']:5.1f} ms CPU per image   "
              f"{r['images_per_s'] / local:5.2f} of local files")
    print(f"  TFRecords byte-identical in every configuration: {'yes' if summary['identical_files'] else 'NO'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.bench_gcs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".bench")
    parser.add_argument("--records", type=int, default=240)
    parser.add_argument("--pool", type=int, default=40, help="distinct full-size JPEGs (objects)")
    parser.add_argument("--latency_ms", default="0,50", help="times to first byte to add, comma-separated")
    parser.add_argument("--read_ahead", default="0,8", help="--image_read_ahead values, comma-separated")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the emulator child
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    settings = ImageSettings(518, "pad", "png", 95, False)
    summary = run(Path(args.workdir).resolve(), args.records, args.pool,
                  [float(v) for v in args.latency_ms.split(",")], [int(v) for v in args.read_ahead.split(",")],
                  settings)
    report(summary)
    path = Path(args.workdir) / "gcs-bench" / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"(summary: {path})")


if __name__ == "__main__":
    main()
