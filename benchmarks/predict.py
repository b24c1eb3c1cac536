"""End-to-end `msn predict` throughput against the model-only forward rate, and peak memory.

* end to end: ``predict`` on a dense slide (every patch predicted: ``--min-tissue 0``), all
  outputs but the mask off; Mpx/s of slide.
* bound: the same model (random init, same width, patch size, batch size) run on the same
  number of triplets already in memory as uint8 (``Predictor.__call__``: transfer, normalise,
  forward, argmax, copy back) — what predict would reach if reading, triplet building, painting
  and writing cost nothing. Goal: end-to-end / bound >= 0.85.
* memory: peak RSS of a fresh process predicting the slide and one with 4x its area
  (goal: at most 1.2x).

Run: ``python benchmarks/predict.py [--size 4096] [--patch 256] [--width 1.0] [--device auto]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).parent / "_work"


def make_slide(size: int) -> Path:
    from msn_cli.synth import texture
    from msn_cli.synth.pyramid import write_pyramid

    path = WORK / f"predict_dense_{size}.tif"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        tiles = texture.texture_tiles(7)
        kinds = np.array([texture.NORMAL, texture.BENIGN, texture.TUMOUR], np.uint8)

        def render(y0: int, y1: int, w: int) -> np.ndarray:
            yy, xx = np.mgrid[y0:y1, 0:w]
            return texture.paint(kinds[(xx // 1536 + yy // 1024) % 3], tiles, 0, y0)

        write_pyramid(path, size, size, render, compression="jpeg")
    return path


def make_checkpoints(patch: int, width: float) -> Path:
    import torch

    from msn_cli.io.checkpoints import CheckpointDir, ModelCard
    from msn_cli.models.msn import MSN, MSNConfig

    path = WORK / f"predict_ck_{patch}_{width:g}"
    if (path / "fusion" / "weights.pt").is_file():
        return path
    torch.manual_seed(0)
    cfg = MSNConfig(backbone="bisenet", width=width, num_classes=4, patch_size=patch)
    model = MSN(cfg)
    ck = CheckpointDir(path)
    path.mkdir(parents=True, exist_ok=True)
    ck.write_card(ModelCard(cfg.to_dict(), ["normal", "benign", "in situ", "invasive"]))
    for name in ("meta", "memrm", "fusion"):
        if name == "fusion":
            model.store_sigma(torch.randn(model.sigma_dim))
        st = ck.stage(name)
        st.dir.mkdir(parents=True, exist_ok=True)
        st.save_weights(model.stage_part(name).state_dict())
    return path


def run_one(slide: Path, ck: Path, args) -> dict:
    """Predict ``slide`` in this process; end-to-end and model-only rates, peak RSS."""
    import resource

    import torch

    from msn_cli import progress
    from msn_cli.prediction.config import PredictConfig, PredictJob
    from msn_cli.prediction.predictor import Predictor
    from msn_cli.stages.predict import predict

    progress.QUIET = True
    cfg = PredictConfig(ck, min_tissue=0.0, batch_size=args.batch_size, device=args.device)
    out = WORK / f"mask_{slide.stem}.tif"
    out.unlink(missing_ok=True)
    predict([PredictJob(slide, out)], cfg)  # warm-up (cudnn autotune, page cache)
    out.unlink()
    t = time.perf_counter()
    [res] = predict([PredictJob(slide, out)], cfg)
    e2e = time.perf_counter() - t
    predictor = Predictor(cfg)
    p, n, b = predictor.patch_size, res.n_predicted, args.batch_size
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 256, (b, p, p, 3), dtype=np.uint8) for _ in range(3)]
    predictor(xs, False)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, n, b):
        predictor([x[: min(b, n - i)] for x in xs], False)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    model_s = time.perf_counter() - t
    return {
        "slide_mpx": res.megapixels,
        "patches": n,
        "e2e_s": e2e,
        "model_s": model_s,
        "device": str(predictor.device),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(Path(args.child[0]), Path(args.child[1]), args)))
        return
    ck = make_checkpoints(args.patch, args.width)
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    rows = []
    for size in (args.size, 2 * args.size):  # the second has 4x the area
        slide = make_slide(size)
        cmd = [sys.executable, __file__, "--child", str(slide), str(ck)]
        cmd += ["--patch", str(args.patch), "--width", str(args.width)]
        cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows.append(r)
        e2e_rate, bound = r["slide_mpx"] / r["e2e_s"], r["slide_mpx"] / r["model_s"]
        print(
            f"{size}x{size} ({r['patches']} patches, {r['device']}): end to end "
            f"{e2e_rate:.2f} Mpx/s, model only {bound:.2f} Mpx/s, ratio {e2e_rate / bound:.2f} "
            f"(overhead {100 * (1 - e2e_rate / bound):.0f}%), peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    print(f"peak memory 4x area / 1x: {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
