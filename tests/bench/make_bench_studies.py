"""Write N synthetic chest-film-like PNG studies for `medvlm bench` (deterministic, no real data).

usage: python tests/bench/make_bench_studies.py OUT_DIR [N=16] [SIZE=1024]
Each PNG at the root of OUT_DIR is one study.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def chest_like(size: int, seed: int) -> Image.Image:
    """Bright mediastinum and spine between two darker lung fields, with rib bands and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.75)
    for cx in (0.3, 0.7):  # lungs
        lung = ((x - cx) / 0.17) ** 2 + ((y - 0.5) / 0.33) ** 2 < 1
        img[lung] = 0.25
    img[np.abs(x - 0.5) < 0.06] = 0.85  # spine / mediastinum
    img += 0.08 * (np.sin(y * 40 + seed) > 0.6) * (np.abs(x - 0.5) > 0.08)  # ribs
    heart = ((x - 0.55) / 0.12) ** 2 + ((y - 0.62) / 0.1) ** 2 < 1
    img[heart] = 0.8
    img += rng.normal(0, 0.03, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L")


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 4:
        print(__doc__.strip().splitlines()[1], file=sys.stderr)
        return 2
    out = Path(argv[1])
    n = int(argv[2]) if len(argv) > 2 else 16
    size = int(argv[3]) if len(argv) > 3 else 1024
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        chest_like(size, i).save(out / f"bench_{i:03d}.png")
    print(f"{n} studies ({size}x{size} PNG) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
