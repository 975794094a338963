"""Two or more servers under the same load, in alternating rounds: what a change costs or saves on the request path.

    python bench/compare.py before=../old/models after=models ['bare=models:APP=bench.bare_app:create_app()']
                            [--rounds 4] [--seconds 5]

Each target is ``NAME=MODELS_DIR`` with optional ``:SETTING=VALUE,...`` (``APP=`` names another WSGI app, as
``bench/run.py`` uses them). Every server runs the service's gunicorn settings with 2 workers; each is loaded
with ``wrk -t1 -c8`` on 64 real test images per model (Fashion-MNIST PNGs, CIFAR-10 JPEGs), back to back,
order reversed every round. Printed: req/s and server CPU per request (medians), each target's throughput over
the first target's within each round (median and range), the services' own decode and inference means, and
the RSS of each process tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run  # noqa: E402


def parse_target(text: str) -> tuple[str, Path, dict[str, str]]:
    """``NAME=MODELS_DIR[:SETTING=VALUE,...]`` -> name, models folder, settings."""
    name, _, rest = text.partition("=")
    folder, _, settings = rest.partition(":")
    if not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=MODELS_DIR[:SETTING=VALUE,...]")
    return name, Path(folder), dict(item.split("=", 1) for item in settings.split(",") if item)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", type=parse_target)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--datasets-dir", type=Path,
                        default=Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets")))
    args = parser.parse_args()
    images = run.load_images(args.datasets_dir, 64)
    workdir = Path(tempfile.mkdtemp(prefix="compare-"))
    listings = {name: run.write_requests(workdir, name, run.service_requests(blobs, kind, 1))
                for name, (blobs, kind, _) in images.items()}
    servers, apps = {}, {}
    try:
        for name, folder, settings in args.targets:
            apps[name] = settings.pop("APP", None)
            servers[name] = run.Server(apps[name], 2, folder, **settings)
        runs: dict = {}
        for model, listing in listings.items():  # warm-up, not recorded
            for server in servers.values():
                run.wrk(server.port, f"/predict?model={model}", listing, 2, 8)
        for round_number in range(args.rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for model, listing in listings.items():
                run.load_round(servers, order, lambda _: f"/predict?model={model}", lambda _: listing,
                               args.seconds, 8, runs, model, round_number)
        steps = {name: run.served_step_means(server.port) for name, server in servers.items() if apps[name] is None}
        memory = {name: run.rss_mb(server.process.pid) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    first = args.targets[0][0]
    print(f"\nmedians of {args.rounds} rounds of {args.seconds} s; ratios to {first} within each round")
    for model in listings:
        for name in servers:
            figures = runs[(name, model)]
            ratio = run.paired_ratio(runs, model, name, "rps", baseline=first)
            served = steps.get(name, {}).get(model, {})
            print(f"  {model:>13} {name:>10}: {statistics.median(f['rps'] for f in figures):6.0f} req/s  CPU "
                  f"{statistics.median(f['server_cpu_us_per_request'] for f in figures):4.0f} us/request  "
                  f"throughput {run.format_ratio(ratio)}"
                  + (f"  decode {served['decode_us']:.0f} us, inference {served['inference_us']:.0f} us"
                     if served else ""))
    print("RSS, master + 2 workers: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in memory.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
