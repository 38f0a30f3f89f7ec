"""``python -m glimpse3d.gateway.http --write-openapi [PATH]``: regenerate the committed OpenAPI spec;
``--check`` exits 1 when the committed spec differs from the code (the spec comes from the routes'
types, so it changes only with them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glimpse3d.gateway.http.app import openapi_text

DEFAULT_SPEC = Path(__file__).resolve().parents[4] / "openapi.json"  # gateway/openapi.json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse3d.gateway.http", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-openapi", action="store_true", help="write the spec")
    action.add_argument("--check", action="store_true", help="fail when the spec on disk is out of date")
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_SPEC, help=f"default: {DEFAULT_SPEC.name}")
    ns = parser.parse_args(argv)
    text = openapi_text()
    if ns.write_openapi:
        ns.path.write_text(text, encoding="utf-8")
        print(f"wrote {ns.path}")
        return 0
    current = ns.path.read_text(encoding="utf-8") if ns.path.exists() else ""
    if current != text:
        print(f"{ns.path} is out of date; run: python -m glimpse3d.gateway.http --write-openapi", file=sys.stderr)
        return 1
    print(f"{ns.path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
