"""What decoding one large upload costs, per format and mode: CPU time and peak memory per decoded pixel.

    python bench/decode_costs.py [--side 4000]

Each case is an image of ``side`` x ``side`` pixels, encoded in memory, then planned and decoded by the service's
own pipeline (``service.inference.images.plan_decode`` + ``decode_planned``) in a fresh process, so its peak RSS growth is
the decode's alone. The figures size the defaults of MAX_DECODE_BYTES and MAX_REQUEST_PIXELS and the bytes per
pixel the planner charges (``service/inference/images.py``); the plan's own estimate is printed beside the measurement and
must not be below it. Results go to ``bench/results/decode_costs.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("png_gray", "png_rgb", "png_rgba", "png_palette", "png_16bit", "gif", "bmp", "tiff_float", "tiff_cmyk",
         "webp_lossless", "webp_alpha", "jpeg_rgb", "jpeg_gray", "jpeg_cmyk")


def encode(case: str, side: int) -> bytes:
    """A photo-like picture (gradients plus noise), so compressed sizes and decode times are realistic."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1),
                    np.full((side, side), 128, np.float32)], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    buffer = io.BytesIO()
    if case == "png_gray":
        image.convert("L").save(buffer, "PNG")
    elif case == "png_rgb":
        image.save(buffer, "PNG")
    elif case == "png_rgba":
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.fromarray(rgb[..., 0]))
        rgba.save(buffer, "PNG")
    elif case in ("png_palette", "gif", "bmp"):
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, {"png_palette": "PNG"}.get(case, case.upper()))
    elif case == "png_16bit":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(buffer, "PNG")
    elif case == "tiff_float":
        Image.fromarray(rgb[..., 0].astype(np.float32) / 255).save(buffer, "TIFF", compression="tiff_deflate")
    elif case == "tiff_cmyk":
        image.convert("CMYK").save(buffer, "TIFF", compression="tiff_deflate")
    elif case == "webp_lossless":
        image.save(buffer, "WEBP", lossless=True)
    elif case == "webp_alpha":
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.fromarray(rgb[..., 0]))
        rgba.save(buffer, "WEBP", quality=80)
    elif case == "jpeg_rgb":
        image.save(buffer, "JPEG", quality=90)
    elif case == "jpeg_gray":
        image.convert("L").save(buffer, "JPEG", quality=90)
    elif case == "jpeg_cmyk":
        image.convert("CMYK").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


MEASURE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])


def peak_rss():  # VmHWM starts afresh at exec; ru_maxrss would carry over the parent's
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024


from contract.metadata import InputSpec
from service.inference.images import DecodeLimits, decode_planned, plan_decode
data = open(sys.argv[1], "rb").read()
spec = InputSpec((28, 28), "grayscale", True) if sys.argv[2] == "gray" else InputSpec((32, 32, 3), "rgb", False)
unlimited = DecodeLimits(1 << 40, 1 << 40, 1 << 40)
decode_planned(plan_decode(open(sys.argv[4], "rb").read(), spec, unlimited), spec)  # warm-up: imports, codecs
before = peak_rss()
started = time.process_time()
plan = plan_decode(data, spec, unlimited)
array, facts = decode_planned(plan, spec)
cpu = time.process_time() - started
peak = peak_rss() - before
print(json.dumps({"format": plan.format, "decoded_pixels": plan.decoded_pixels, "estimated_bytes": plan.decode_bytes,
                  "peak_bytes": peak, "cpu_seconds": cpu, "shape": list(array.shape)}))
"""


def measure(case: str, side: int, model: str, workdir: Path) -> dict:
    path = workdir / f"{case}.bin"
    path.write_bytes(encode(case, side))
    warm = workdir / "warm.bin"
    warm.write_bytes(encode(case, 64))
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), model, str(ROOT), str(warm)],
                         capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout)
    result.update(case=case, model=model, file_bytes=path.stat().st_size, side=side)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=4000)
    args = parser.parse_args()
    results = []
    print(f"{args.side}x{args.side} uploads, decoded for the gray 28x28 and the RGB 32x32 model")
    print(f"{'case':15} {'model':5} {'file kB':>8} {'decoded Mpx':>11} {'CPU ms':>7} {'ms/Mpx':>7} "
          f"{'peak MB':>8} {'B/px':>5} {'plan B/px':>9}")
    with tempfile.TemporaryDirectory() as workdir:
        for case in CASES:
            for model in ("gray", "rgb"):
                r = measure(case, args.side, model, Path(workdir))
                results.append(r)
                mpx = r["decoded_pixels"] / 1e6
                print(f"{case:15} {model:5} {r['file_bytes'] / 1e3:8.0f} {mpx:11.2f} {r['cpu_seconds'] * 1e3:7.0f} "
                      f"{r['cpu_seconds'] * 1e3 / mpx:7.1f} {r['peak_bytes'] / 1e6:8.0f} "
                      f"{r['peak_bytes'] / r['decoded_pixels']:5.1f} {r['estimated_bytes'] / r['decoded_pixels']:9.1f}")
    out = ROOT / "bench" / "results" / "decode_costs.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
