"""``python -m fastio_dl.emulator``: serve a directory or a generated data set on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from aiohttp import web

from fastio_dl.emulator import DEFAULT_TOKEN, HOST, DatasetSpec, Fault, Switches, build


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().rstrip("ib")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastio_dl.emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--data", type=Path, help="serve this directory tree as the workspace")
    parser.add_argument("--files", type=int, default=100, help="generated files (without --data)")
    parser.add_argument("--depth", type=int, default=2, help="generated folder depth")
    parser.add_argument("--fanout", type=int, default=3, help="generated folders per folder")
    parser.add_argument("--min-size", type=_size, default=0)
    parser.add_argument("--max-size", type=_size, default=64 * 1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--notes", type=int, default=1, help="generated note nodes")
    parser.add_argument("--links", type=int, default=1, help="generated link nodes")
    parser.add_argument("--plain-names", action="store_true", help="no spaces or unicode in names")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    parser.add_argument(
        "--bandwidth", type=_size, default=0, help="bytes/s per connection (e.g. 2M)"
    )
    parser.add_argument("--no-range", action="store_true", help="ignore Range headers")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[:k=v,...]",
        help="e.g. drop:after_bytes=1000,times=3 or rate_limit:probability=0.1,endpoint=any",
    )
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="the API token the emulator accepts")
    args = parser.parse_args(argv)
    try:
        faults = [Fault.parse(text) for text in args.fault]
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    switches = Switches(
        latency=args.latency,
        bandwidth=args.bandwidth,
        range_enabled=not args.no_range,
        faults=faults,
    )
    spec = DatasetSpec(
        files=args.files,
        depth=args.depth,
        fanout=args.fanout,
        min_size=args.min_size,
        max_size=args.max_size,
        seed=args.seed,
        notes=args.notes,
        links=args.links,
        odd_names=not args.plain_names,
    )
    emulator, space = build(spec, directory=args.data, switches=switches)
    emulator.tokens = {args.token}
    files = list(space.files())
    print(f"fastio emulator on http://{HOST}:{args.port}/current", file=sys.stderr)
    print(f"  workspace {space.id} ({space.name}): {len(files)} files", file=sys.stderr)
    print(
        f"  token: FASTIO_TOKEN={args.token}  (an emulator token, not a real one)", file=sys.stderr
    )
    print(
        f"  try: fastio-dl get --api-base http://{HOST}:{args.port}/current "
        f"ws:{space.id}/root -d ./out",
        file=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        web.run_app(emulator.app, host=HOST, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
