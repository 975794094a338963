"""``python -m service keys ...``: the service's command line (serving itself is ``make serve``, gunicorn)."""

import sys

COMMANDS = {"keys": "manage API keys (service/access/cli.py)"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m service <command> ...\n" +
              "\n".join(f"  {name:8} {what}" for name, what in COMMANDS.items()), file=sys.stderr)
        return 2
    from service.access import cli

    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
