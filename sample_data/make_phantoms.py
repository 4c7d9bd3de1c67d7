"""Write procedural chest-radiograph phantoms with known findings: one folder per study plus truth.csv.

Run: python sample_data/make_phantoms.py OUT --n N --seed S [--size PX] [--start I] [--overwrite]

Each study is DICOM (CR or DX; PA, AP, PA + lateral; MONOCHROME1 or 2; some with rescale, padding,
RLE or JPEG 2000 lossless) or a PNG with a JSON sidecar, with synthetic identifiers. OUT/truth.csv
has `study` (the folder name), `findings` (chest vocabulary codes joined by ';', empty when normal)
and `details` (side, severity, zone, size). Study i of a seed is the same whatever N is, and the
same arguments give byte-identical files. The generator lives in medvlm.phantoms.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from medvlm.phantoms import TRUTH_NAME, generate


def _clear(out: Path) -> None:
    """Remove what an earlier run of this script wrote (phantom_* folders and truth.csv), nothing else."""
    for entry in out.iterdir():
        if entry.is_dir() and entry.name.startswith("phantom_"):
            shutil.rmtree(entry)
        elif entry.name == TRUTH_NAME:
            entry.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument("--n", type=int, required=True, help="number of studies")
    parser.add_argument("--seed", type=int, required=True, help="random seed (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=512, help="image rows in pixels (default 512)")
    parser.add_argument("--start", type=int, default=0, help="index of the first study (default 0)")
    parser.add_argument("--png-share", type=float, default=0.1, help="share of PNG studies (default 0.1)")
    parser.add_argument("--overwrite", action="store_true", help="replace phantoms and truth.csv already in OUT")
    args = parser.parse_args(argv)
    if args.n < 1 or args.seed < 0 or args.start < 0 or not 64 <= args.size <= 4096 or not 0 <= args.png_share <= 1:
        parser.error("--n must be >= 1, --seed and --start >= 0, --size 64..4096, --png-share 0..1")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out} exists and is not a folder")
    if args.out.is_dir() and any(args.out.iterdir()):
        if not args.overwrite:
            parser.error(f"{args.out} is not empty (use --overwrite to replace the phantoms in it)")
        _clear(args.out)
    started = time.perf_counter()
    studies = generate(args.out, args.n, args.seed, args.size, start=args.start, png_share=args.png_share)
    normal = sum(1 for s in studies if not s.findings)
    files = sum(1 for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(studies)} studies ({normal} normal), {files} files, under {args.out} "
          f"in {time.perf_counter() - started:.1f} s; truth in {args.out / TRUTH_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
