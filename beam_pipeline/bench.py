"""``make bench``: the image and text stages against their raw limits, measured in the same run on one core.

Images, on MIMIC-sized JPEGs (3056 x 2544 etc., quality 95, made by the sample generator; OpenCV single-threaded):

- the raw decode limit: plain full-resolution ``cv2.imdecode`` of the same bytes;
- the image stage per image: read the file, inspect, reduced decode, resize, pad, encode (``pixels.preprocess``);
- the image stage inside Beam (``ProcessImages``) over N records, each N in a fresh process, with its peak RSS.
  A pool of distinct JPEGs is generated once; the N records point at them through symlinks (no disk cost).

Text, on the pseudo-notes of a generated sample (torch single-threaded, batches of 32):

- the raw embedding forward pass of the notes (tokenise + encoder + pooling, what retrieval cannot avoid);
- the text stage: leakage filter + tokenisation (note and enhanced note) + embedding + FAISS search + enhanced note.

Ratios above 1 mean the stage beats the raw limit (reduced DCT decoding skips work).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pipeline import kb, mimic, models, sample
from beam_pipeline.fileio.tfrecord import parse_example, read_records
from beam_pipeline.readers.common import resolve_output
from beam_pipeline.transforms import leakage, pixels, text
from beam_pipeline.transforms.images import ImageSettings, ProcessImages
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
    t = dt.datetime(2150, 1, 1)
    out = []
    for i in range(n):
        subject, study, dicom = 10000000 + i, 50000000 + i, f"bench-{i:06d}"
        relative = mimic.image_path(subject, study, dicom)
        link = root / relative
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(pool[i % len(pool)])
        out.append(Record(subject, study, dicom, 30000000, "AP", t, t, None, relative, None, None, note="", query="",
                          features=(), features_missing=(), labels_raw=(), labels_binary=(), labels_mask=(),
                          split="train"))
    return out


def rate(fn, items, seconds: float) -> float:
    """Items per second of fn over items, repeated until at least ``seconds`` have passed."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for item in items:
            fn(item)
        done += len(items)
    return done / (time.perf_counter() - start)


def micro(pool: list[Path], settings: ImageSettings, seconds: float) -> dict:
    """Raw full decode vs the per-image stage on the same files, interleaved three times (median)."""
    cv2.setNumThreads(1)
    blobs = [p.read_bytes() for p in pool]
    raw, stage = [], []
    for _ in range(3):
        raw.append(rate(lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE), blobs, seconds))
        stage.append(rate(lambda p: pixels.preprocess(p.read_bytes(), settings.size, settings.mode, settings.fmt,
                                                      settings.jpeg_quality, settings.edge_map), pool, seconds))
    return {"raw_decode": float(np.median(raw)), "stage": float(np.median(stage)),
            "mean_jpeg_mb": float(np.mean([len(b) for b in blobs]) / 2 ** 20)}


def beam_stage(root: Path, pool: list[Path], n: int, settings: ImageSettings) -> dict:
    """The ProcessImages DoFn over n records in Beam's in-process runner (one worker); outputs are only counted."""
    items = records(root, pool, n)
    start = time.perf_counter()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        processed = (p | beam.Create(items, reshuffle=False)
                     | beam.ParDo(ProcessImages(str(root), settings)).with_outputs("rejects", "events", main="records"))
        _ = processed.records | beam.Map(lambda r: len(r.image.encoded)) | beam.combiners.Count.Globally()
    seconds = time.perf_counter() - start
    return {"n": n, "seconds": seconds, "rate": n / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def sample_notes(workdir: Path, count: int) -> list[str]:
    """Pseudo-notes of a generated sample (the pipeline run with --images=false), repeated up to ``count``."""
    from beam_pipeline import run

    output = workdir / "notes-run"
    if not (output / "LATEST").exists():
        roots = sample.generate(workdir / "notes-sample", subjects=max(30, count // 2), seed=11)
        run.run([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
                 f"--output={output}", f"--tokenizer={models.PACKAGED}", "--images=false", "--overwrite"])
    folder = Path(resolve_output(str(output)))
    notes = [parse_example(raw)["note/text"][0].decode() for path in sorted((folder / "tfrecords").glob("*.tfrecord"))
             for raw in read_records(str(path))]
    return (notes * (count // len(notes) + 1))[:count]


def text_micro(workdir: Path, count: int, seconds: float, index: str = "", batch_size: int = 32) -> dict:
    """Raw embedding forward pass vs the whole text stage on the same notes, interleaved three times (median)."""
    notes = sample_notes(workdir, count)
    if not index:
        index = str(workdir / "kb")
        if not (workdir / "kb" / "kb.json").exists():
            kb.build(index)
    knowledge, embedder = kb.load(index), models.Embedder(models.PACKAGED)
    tokenizer, rules = models.load_tokenizer(models.PACKAGED), leakage.load_rules()
    batches = [notes[i:i + batch_size] for i in range(0, len(notes), batch_size)]

    def stage(batch):
        filtered = [leakage.redact(note, rules, "[REDACTED]")[0] for note in batch]
        models.tokenize(tokenizer, filtered, 512)
        hits = text.retrieve(knowledge, embedder.embed(filtered), 3)
        enhanced = [text.enhanced_note(n, [knowledge.passages[p] for p, _ in row]) for n, row in zip(filtered, hits)]
        models.tokenize(tokenizer, enhanced, 512)

    raw, full = [], []
    for _ in range(3):
        raw.append(rate(embedder.embed, batches, seconds) * batch_size)
        full.append(rate(stage, batches, seconds) * batch_size)
    return {"raw_embed": float(np.median(raw)), "stage": float(np.median(full)), "notes": len(notes),
            "mean_chars": float(np.mean([len(n) for n in notes]))}


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
        print(f"text stage benchmark: {t['notes']} sample notes (mean {t['mean_chars']:.0f} characters), batches "
              f"of 32, one core")
        print(f"  raw embedding forward pass      {t['raw_embed']:7.1f} notes/s")
        print(f"  filter + tokenise + retrieve    {t['stage']:7.1f} notes/s   ratio {t['stage'] / t['raw_embed']:.2f}")
        if args.only == "text":
            return
    pool = make_pool(workdir / "pool", args.pool)
    settings = ImageSettings(args.image_size, args.resize_mode, args.image_format, 95, False)
    if args.child:
        print(json.dumps(beam_stage(workdir / "tree", pool, args.child, settings)))
        return
    m = micro(pool, settings, args.seconds)
    print(f"image stage benchmark: {args.image_size} px, {args.resize_mode}, {args.image_format}; "
          f"{len(pool)} distinct MIMIC-size JPEGs (q95, mean {m['mean_jpeg_mb']:.2f} MB); one core")
    print(f"  raw full-resolution decode      {m['raw_decode']:7.1f} images/s")
    print(f"  image stage, per image          {m['stage']:7.1f} images/s   ratio {m['stage'] / m['raw_decode']:.2f}")
    for n in (int(s) for s in args.sizes.split(",")):
        child = subprocess.run([sys.executable, "-m", "beam_pipeline.bench", f"--workdir={workdir}",
                                f"--pool={args.pool}", f"--image_size={args.image_size}",
                                f"--resize_mode={args.resize_mode}", f"--image_format={args.image_format}",
                                f"--child={n}"], check=True, capture_output=True, text=True, env=os.environ)
        b = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"  image stage in Beam, {n:>6,} imgs {b['rate']:7.1f} images/s   ratio "
              f"{b['rate'] / m['raw_decode']:.2f}   peak RSS {b['peak_rss_mb']:6.0f} MB")


if __name__ == "__main__":
    main()
