"""``python -m service keys add|list|revoke``: manage API keys where the service reads them (the same settings:
``API_KEYS_FILE`` or ``API_KEYS_DATABASE`` with ``DATABASE_URL``, and ``API_KEYS_SECRET``). Workers see a change
within a second or two, with no restart."""

from __future__ import annotations

import argparse
import json
import sys
import time

from contract.config import SettingError
from contract.layout import published_models
from service.access.gate import key_source
from service.access.keys import new_key
from service.settings import Settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m service keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="make a key; it is printed once, on standard output")
    add.add_argument("name", help="the key's name: its metrics label and how it is revoked")
    add.add_argument("--models", help="comma-separated models it may call (default: all)")
    add.add_argument("--requests-per-second", type=float, help="its request rate (default: unlimited)")
    add.add_argument("--burst", type=int, help="requests it may send at once (default: one second's worth)")
    add.add_argument("--images-per-minute", type=int, help="images it may send a minute, a batch of 32 counting "
                                                           "32 (default: unlimited)")
    listing = commands.add_parser("list", help="every key, revoked ones too, without secrets")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    revoke = commands.add_parser("revoke", help="revoke the live key of this name")
    revoke.add_argument("name")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingError as error:
        parser.error(str(error))
    if not settings.api_keys_enabled:
        parser.error("set API_KEYS_FILE (or API_KEYS_DATABASE=1 with DATABASE_URL) and API_KEYS_SECRET, as the "
                     "service has them")
    source = key_source(settings, serving=False)

    if args.command == "add":
        models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
        try:
            made = new_key(args.name, settings.api_keys_secret, time.time(), models=models,
                           requests_per_second=args.requests_per_second, burst=args.burst,
                           images_per_minute=args.images_per_minute)
            source.add(made.record)
        except ValueError as error:
            parser.error(str(error))
        unpublished = sorted(set(models or ()) - set(published_models(settings.models_dir)))
        if unpublished:  # allowed (a model may be published later), but more often a typo
            print(f"note: {', '.join(unpublished)} not published in {settings.models_dir} (yet)", file=sys.stderr)
        print(f"added {made.record.name!r} ({made.record.id}); the key is shown this once:", file=sys.stderr)
        print(made.key)
    elif args.command == "list":
        keys = [key.describe() for key in source.keys()]
        if args.json:
            print(json.dumps({"keys": keys}, indent=1))
        else:
            print(table(keys))
    elif not source.revoke(args.name, time.time()):
        print(f"no live key is named {args.name!r}", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.name!r}", file=sys.stderr)
    return 0


def table(keys: list[dict]) -> str:
    def shown(value, unit=""):
        return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"

    rows = [("name", "id", "models", "requests/s", "burst", "images/min", "created", "revoked")]
    for key in keys:
        rows.append((key["name"], key["id"], ",".join(key["models"]) if key["models"] else "all",
                     shown(key["requests_per_second"]), shown(key["burst"]), shown(key["images_per_minute"]),
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(key["created_at"])),
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(key["revoked_at"])) if key["revoked_at"] else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
