"""Two or more servers under the same load, in alternating rounds: what a change costs or saves on the request path.

    python bench/compare.py before=../old/models after=models ['bare=models:APP=bench.bare_app:create_app()']
                            [--rounds 4] [--seconds 5]
    python bench/compare.py off=models keys=models:KEYS=file quota=models:KEYS=file-quota \
                            pg=models:KEYS=postgres pg-quota=models:KEYS=postgres-quota

Each target is ``NAME=MODELS_DIR`` with optional ``:SETTING=VALUE,...`` (``APP=`` names another WSGI app, as
``bench/run.py`` uses them; ``KEYS=`` turns API keys on, ``bench/api_keys.py``: a key is made with the
service's CLI in a keys file or a throwaway PostgreSQL server, with or without never-refusing quotas, and every
request sends it in ``X-API-Key``). Every server runs the service's gunicorn settings with 2 workers; each is
loaded with ``wrk -t1 -c8`` on 64 real test images per model (Fashion-MNIST PNGs, CIFAR-10 JPEGs), back to
back, order reversed every round. Printed: req/s, p50/p99 latency and server CPU per request (medians), wrk's
errors and answers other than 2xx (all rounds), each target's throughput over the first target's within each
round (median and range), the services' own decode and inference means, the RSS of each process tree, and
the CPU per request of each target's own PostgreSQL server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run  # noqa: E402
from api_keys import Postgres, make_key  # noqa: E402
from peers import Request  # noqa: E402


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
    requests = {model: run.service_requests(blobs, kind, 1) for model, (blobs, kind, _) in images.items()}
    listings = {model: run.write_requests(workdir, model, batch) for model, batch in requests.items()}
    servers, apps, keyed, databases = {}, {}, {}, {}
    try:
        for name, folder, settings in args.targets:
            apps[name] = settings.pop("APP", None)
            if "KEYS" in settings:
                setup = settings.pop("KEYS")
                if setup.startswith("postgres"):  # one server per target, so its CPU is that target's
                    databases[name] = Postgres(run.free_port())
                keys_settings, key = make_key(setup, workdir, name, databases.get(name))
                settings = keys_settings | settings
                keyed[name] = {model: run.write_requests(workdir, f"{name}-{model}", [
                    Request(r.path, r.headers | {"X-API-Key": key}, r.body) for r in batch])
                    for model, batch in requests.items()}
            servers[name] = run.Server(apps[name], 2, folder, **settings)

        def listing_of(name: str, model: str) -> Path:
            return keyed[name][model] if name in keyed else listings[model]

        runs: dict = {}
        for model in listings:  # warm-up, not recorded
            for name, server in servers.items():
                run.wrk(server.port, f"/predict?model={model}", listing_of(name, model), 2, 8)
        database_cpu = {name: run.cpu_seconds(database.pid) for name, database in databases.items()}
        for round_number in range(args.rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for model in listings:
                run.load_round(servers, order, lambda _: f"/predict?model={model}",
                               lambda name: listing_of(name, model), args.seconds, 8, runs, model, round_number)
        database_cpu = {name: run.cpu_seconds(database.pid) - database_cpu[name]
                        for name, database in databases.items()}
        steps = {name: run.served_step_means(server.port) for name, server in servers.items() if apps[name] is None}
        memory = {name: run.rss_mb(server.process.pid) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
        for database in databases.values():
            database.stop()
    first = args.targets[0][0]
    print(f"\nmedians of {args.rounds} rounds of {args.seconds} s; ratios to {first} within each round")
    for model in listings:
        for name in servers:
            figures = run.medians(runs[(name, model)])
            ratio = run.paired_ratio(runs, model, name, "rps", baseline=first)
            served = steps.get(name, {}).get(model, {})
            print(f"  {model:>13} {name:>10}: {figures['rps']:6.0f} req/s  p50 {figures['p50_ms']:.2f} ms  "
                  f"p99 {figures['p99_ms']:.2f} ms  CPU {figures['server_cpu_us_per_request']:4.0f} us/request  "
                  f"throughput {run.format_ratio(ratio)}  non-2xx/errors {figures['errors']}"
                  + (f"  decode {served['decode_us']:.0f} us, inference {served['inference_us']:.0f} us"
                     if served else ""))
    for name, cpu in database_cpu.items():
        requests_served = sum(f["requests"] for model in listings for f in runs[(name, model)])
        print(f"PostgreSQL server CPU for {name}: {cpu / requests_served * 1e6:.0f} us/request over all rounds, on "
              f"top of the service's")
    print("RSS, master + 2 workers: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in memory.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
