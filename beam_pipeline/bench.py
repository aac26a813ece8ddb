"""``make bench``: the image and text stages against their raw limits, measured in the same run on one core.

Images, on MIMIC-sized JPEGs (3056 x 2544 etc., quality 95, made by the sample generator; one thread), per
CPU-second of the process (so per core, and less moved than wall time by other load on shared cores):

- the raw decode limit: a plain full-resolution grayscale decode of the same bytes with the stage's decoder
  (libjpeg-turbo through simplejpeg, strict), and for comparison with OpenCV's ``cv2.imdecode`` (the stage's
  decoder before 2026-11-30);
- the image stage per image: read the file, inspect, strict reduced decode, resize, pad, encode
  (``pixels.preprocess``); both interleaved five times, best of each;
- the image stage inside Beam (the TFRecord shard writer, ``WriteExamples``) over N records, each N in a fresh
  process, with its peak RSS, against the raw decode limit measured again in that process.
  A pool of distinct JPEGs is generated once; the N records point at them through symlinks (no disk cost).

Text, on the notes and retrieval queries of a generated sample (torch single-threaded, batches of 32, rates per
CPU-second of the process, so per core), before 2026-11-30 (one padded forward pass per batch) and now (queries sorted
by token length, packed sub-batches of ``models.EMBED_SUB_BATCH``):

- the embedding of the retrieval queries (tokenise + encoder + pooling);
- the text stage: leakage filter + ``TokenizeAndRetrieve`` (tokenisation of the note and of the enhanced note,
  embedding, FAISS search, enhanced note);
- how often both retrieve the same top-3 passage set, each with its own build of the packaged knowledge base.

Ratios above 1 mean the stage beats the raw limit (reduced DCT decoding skips work).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import cv2
import numpy as np
import simplejpeg
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipeline import kb, mimic, models, sample
from beam_pipeline.fileio.outputs import Serialize, WriteExamples, example_plan
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import resolve_output
from beam_pipeline.transforms import leakage, pixels, text
from beam_pipeline.transforms.examples import to_example
from beam_pipeline.transforms.images import READ_AHEAD, ImageLoader, ImageSettings
from beam_pipeline.transforms.records import Record


def make_pool(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct full-size radiograph JPEGs (MIMIC sizes, quality 95), generated once."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"pool-{i:03d}.jpg"
        if not path.exists():
            rows, columns = sample.FULL_SIZES[i % len(sample.FULL_SIZES)]
            path.write_bytes(sample.encode(sample.radiograph(rng, rows, columns, lateral=False)))
        paths.append(path)
    return paths


def records(root: Path, pool: list[Path], n: int) -> list[Record]:
    """n records whose image paths (symlinks under root) point at the pool round-robin."""
    out = []
    for i in range(n):
        relative = mimic.image_path(10000000 + i, 50000000 + i, f"bench-{i:06d}")
        link = root / relative
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(pool[i % len(pool)])
        out.append(record(i, relative))
    return out


def record(i: int, image_path: str) -> Record:
    """The i-th benchmark record (subject, study and dicom_id from i), its image at ``image_path``."""
    t = dt.datetime(2150, 1, 1)
    return Record(10000000 + i, 50000000 + i, f"bench-{i:06d}", 30000000, "AP", t, t, None, image_path, None, None,
                  note="", query="", features=(), features_missing=(), labels_raw=(), labels_binary=(),
                  labels_mask=(), split="train")


def rate(fn, items, seconds: float, clock=time.perf_counter) -> float:
    """Items per second of ``clock`` (wall by default) of fn over items, repeated until ``seconds`` have passed."""
    done, start = 0, clock()
    while clock() - start < seconds:
        for item in items:
            fn(item)
        done += len(items)
    return done / (clock() - start)


def raw_decode(blob: bytes) -> np.ndarray:
    """The raw decode limit: full resolution, grayscale, with the stage's decoder and its strictness."""
    return simplejpeg.decode_jpeg(blob, "GRAY", strict=True)


def opencv_decode(blob: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)


def micro(pool: list[Path], settings: ImageSettings, seconds: float, rounds: int = 5) -> dict:
    """Raw full decodes (``raw_decode``; ``raw_decode_opencv``) and the per-image stage on the same files,
    interleaved ``rounds`` times, per CPU-second; the best of each (other load only slows)."""
    cv2.setNumThreads(1)
    blobs = [p.read_bytes() for p in pool]
    work = {"raw_decode": (raw_decode, blobs), "raw_decode_opencv": (opencv_decode, blobs),
            "stage": (lambda p: pixels.preprocess(p.read_bytes(), settings.size, settings.mode, settings.fmt,
                                                  settings.jpeg_quality, settings.edge_map), pool)}
    measured: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(rounds):
        for name, (fn, items) in work.items():
            measured[name].append(cpu_rate(fn, items, seconds))
    return {**{name: max(values) for name, values in measured.items()},
            "mean_jpeg_mb": float(np.mean([len(b) for b in blobs]) / 2 ** 20)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def beam_stage(root: Path, pool: list[Path], n: int, settings: ImageSettings, seconds: float) -> dict:
    """The image stage as the job runs it: the TFRecord shard writer reading, preprocessing, serialising and
    appending n records (``WriteExamples``), in Beam's in-process runner (one worker), per CPU-second; with the raw
    decode limit measured in the same process just before and after (the mean) on six of the JPEGs (two of each
    size; the whole pool in memory would be the child's peak RSS), as shared cores change speed."""
    before = cpu_rate(raw_decode, [p.read_bytes() for p in pool[:6]], seconds)
    items = records(root, pool, n)
    output = root.parent / f"beam-out-{n}"
    shutil.rmtree(output, ignore_errors=True)
    wall, cpu = write_examples(items, ImageLoader(str(root), settings, read_ahead=READ_AHEAD), settings, output)
    return {"n": n, "seconds": wall, "rate": n / wall, "cpu_rate": n / cpu,
            "raw_decode": (before + cpu_rate(raw_decode, [p.read_bytes() for p in pool[:6]], seconds)) / 2,
            "peak_rss_mb": peak_rss_mb()}


def write_examples(items: list[Record], loader: ImageLoader, settings: ImageSettings, output: Path
                   ) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of the TFRecord shard writer (``WriteExamples``) reading,
    preprocessing, serialising and appending ``items`` in Beam's in-process runner (one worker)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (p | beam.Create(items, reshuffle=False)
             | WriteExamples(str(output), example_plan(200.0, settings), "none", loader, Serialize(to_example),
                             key=lambda r: r.dicom_id, after=p | "NoChecks" >> beam.Create([])))
    return time.perf_counter() - start, cpu_seconds() - cpu


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ``getrusage``'s ``ru_maxrss``: Linux carries that over fork and exec,
    so a child started by the benchmark (which holds the text models, ~1 GB) would report the parent's peak."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def sample_notes(workdir: Path, count: int, index: str) -> list[tuple[str, str]]:
    """(note, retrieval query) pairs of a generated sample (the pipeline run with --images=false and retrieval),
    repeated up to ``count``."""
    from beam_pipeline import run

    output = workdir / "text-run"
    if not (output / "LATEST").exists():
        shutil.rmtree(workdir / "notes-sample", ignore_errors=True)  # an interrupted run's sample
        roots = sample.generate(workdir / "notes-sample", subjects=max(30, count // 2), seed=11)
        run.run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
                 f"--output={output}", f"--tokenizer={models.PACKAGED}", "--images=false", f"--kb_index={index}",
                 "--overwrite"])
    folder = Path(resolve_output(str(output)))
    examples = [parse_example(raw) for path in sorted((folder / "tfrecords").glob("*.tfrecord"))
                for raw in read_records(str(path))]
    pairs = [(e["note/text"][0].decode(), e["rag/query"][0].decode()) for e in examples]
    return (pairs * (count // len(pairs) + 1))[:count]


def cpu_rate(fn, items, seconds: float) -> float:
    """Items per CPU-second of this process (all its threads): a per-core rate that other load barely moves."""
    return rate(fn, items, seconds, clock=time.process_time)


def text_stage(index: str, sub_batch: int) -> text.TokenizeAndRetrieve:
    """The pipeline's text DoFn, set up, embedding in sub-batches of ``sub_batch`` (0 = before 2026-11-30)."""
    stage = text.TokenizeAndRetrieve(text.TextSettings(models.PACKAGED, "main", 512, index, models.PACKAGED, 3,
                                                       sub_batch, kb.read_manifest(index)["index_sha256"]))
    stage.setup()
    return stage


def top_k_agreement(before: list[list[Record]], after: list[list[Record]]) -> float:
    """Share of records whose retrieved passage sets are identical."""
    pairs = [(b.rag_ids, a.rag_ids) for bb, ab in zip(before, after) for b, a in zip(bb, ab)]
    return sum(set(b) == set(a) for b, a in pairs) / len(pairs)


def text_micro(workdir: Path, count: int, seconds: float, index: str = "", batch_size: int = 32) -> dict:
    """The embedding of the retrieval queries and the whole text stage (``TokenizeAndRetrieve`` after the leakage
    filter), as before 2026-11-30 (one padded forward pass per batch, with an index built that way) and now (sorted
    by length, sub-batches), interleaved five times (best: other load only slows), in notes per CPU-second; and how
    often both retrieve the same passage set."""
    sub_batches = {"before": 0, "after": models.EMBED_SUB_BATCH}
    indexes = {"before": str(workdir / "kb-before"), "after": index or str(workdir / "kb")}
    for name, sub_batch in sub_batches.items():
        if indexes[name] != index and not kb.up_to_date(indexes[name], sub_batch=sub_batch):  # --kb_index: as is
            kb.build(indexes[name], sub_batch=sub_batch)
    pairs = sample_notes(workdir, count, indexes["after"])
    rules = leakage.load_rules()
    t = dt.datetime(2150, 1, 1)
    items = [Record(10000000 + i, 50000000 + i, f"bench-{i:06d}", 30000000, "AP", t, t, None, "", None, None,
                    note=note, query=query, features=(), features_missing=(), labels_raw=(), labels_binary=(),
                    labels_mask=(), split="train") for i, (note, query) in enumerate(pairs)]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    stages = {name: text_stage(indexes[name], sub_batch) for name, sub_batch in sub_batches.items()}
    embedders = {name: models.Embedder(models.PACKAGED, sub_batch) for name, sub_batch in sub_batches.items()}

    def run_stage(stage, batch):
        filtered = [dataclasses.replace(r, note=leakage.redact(r.note, rules, "[REDACTED]")[0],
                                        query=leakage.redact(r.query, rules, "[REDACTED]")[0]) for r in batch]
        return [out for out in stage.process(filtered) if isinstance(out, Record)]

    results = {name: [run_stage(stage, batch) for batch in batches] for name, stage in stages.items()}
    measured: dict[str, list[float]] = {}
    for _ in range(5):
        for name, stage in stages.items():
            measured.setdefault(f"embed_{name}", []).append(
                cpu_rate(lambda batch: embedders[name].embed([r.query for r in batch]), batches, seconds) * batch_size)
            measured.setdefault(f"stage_{name}", []).append(
                cpu_rate(lambda batch: run_stage(stage, batch), batches, seconds) * batch_size)
    return {**{name: max(values) for name, values in measured.items()},
            "agreement": top_k_agreement(results["before"], results["after"]),
            "notes": len(items), "distinct": len(set(pairs)),
            "mean_chars": float(np.mean([len(n) for n, _ in pairs])),
            "mean_query_chars": float(np.mean([len(q) for _, q in pairs]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".bench")
    parser.add_argument("--pool", type=int, default=40, help="distinct full-size JPEGs (default 40)")
    parser.add_argument("--sizes", default="1000,10000", help="record counts for the Beam runs")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per micro measurement")
    parser.add_argument("--image_size", type=int, default=518)
    parser.add_argument("--resize_mode", default="pad", choices=pixels.RESIZE_MODES)
    parser.add_argument("--image_format", default="png", choices=pixels.FORMATS)
    parser.add_argument("--notes", type=int, default=256, help="notes for the text benchmark")
    parser.add_argument("--kb_index", default="", help="an existing index (default: build the packaged one)")
    parser.add_argument("--only", choices=("images", "text"), help="run one section")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one Beam run, JSON on stdout
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if args.only != "images" and not args.child:
        t = text_micro(workdir, args.notes, args.seconds, args.kb_index)
        print(f"text stage benchmark: {t['notes']} sample notes ({t['distinct']} distinct; mean {t['mean_chars']:.0f} "
              f"characters, retrieval query {t['mean_query_chars']:.0f}), batches of 32, per core (CPU time)")
        for name, how in (("before", "before 2026-11-30: one padded embedding pass per batch"),
                          ("after", f"now: queries sorted by length, packed sub-batches of {models.EMBED_SUB_BATCH}")):
            gain = (f"   x{t['embed_after'] / t['embed_before']:.2f}", f"   x{t['stage_after'] / t['stage_before']:.2f}"
                    ) if name == "after" else ("", "")
            print(f"  {how}")
            print(f"    raw embedding forward pass    {t['embed_' + name]:7.1f} notes/s{gain[0]}")
            print(f"    filter + tokenise + retrieve  {t['stage_' + name]:7.1f} notes/s   ratio "
                  f"{t['stage_' + name] / t['embed_' + name]:.2f}{gain[1]}")
        print(f"  top-3 passage sets identical    {t['agreement']:7.1%} of the notes")
        if args.only == "text":
            return
    pool = make_pool(workdir / f"pool-v{sample.RADIOGRAPH_VERSION}", args.pool)
    settings = ImageSettings(args.image_size, args.resize_mode, args.image_format, 95, False)
    if args.child:
        print(json.dumps(beam_stage(workdir / "tree", pool, args.child, settings, args.seconds)))
        return
    m = micro(pool, settings, args.seconds)
    print(f"image stage benchmark: {args.image_size} px, {args.resize_mode}, {args.image_format}; "
          f"{len(pool)} distinct MIMIC-size JPEGs (q95, mean {m['mean_jpeg_mb']:.2f} MB); per CPU-second")
    print(f"  raw full-resolution decode      {m['raw_decode']:7.1f} images/s   (stage's decoder: simplejpeg, strict)")
    print(f"    the same with OpenCV          {m['raw_decode_opencv']:7.1f} images/s   "
          f"ratio {m['raw_decode_opencv'] / m['raw_decode']:.2f}")
    print(f"  image stage, per image          {m['stage']:7.1f} images/s   ratio {m['stage'] / m['raw_decode']:.2f}")
    for n in (int(s) for s in args.sizes.split(",")):
        child = subprocess.run([sys.executable, "-m", "beam_pipeline.bench", f"--workdir={workdir}",
                                f"--pool={args.pool}", f"--image_size={args.image_size}",
                                f"--resize_mode={args.resize_mode}", f"--image_format={args.image_format}",
                                f"--seconds={args.seconds}", f"--child={n}"],
                               check=True, capture_output=True, text=True, env=os.environ)
        b = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"  image stage in Beam, {n:>6,} imgs {b['cpu_rate']:7.1f} images/s   ratio "
              f"{b['cpu_rate'] / b['raw_decode']:.2f}   peak RSS {b['peak_rss_mb']:6.0f} MB   "
              f"(raw decode in that process {b['raw_decode']:.1f}; {b['rate']:.1f} images per wall second)")


if __name__ == "__main__":
    main()
