"""``python -m fastio_dl`` and the ``fastio-dl`` command: import the CLI, then run it."""

import gc
from collections.abc import Callable


def import_cli() -> Callable[[], None]:
    """Import the CLI without the garbage collector.

    Importing it (asyncio, aiohttp, typer and the engine) makes some 100,000 objects that all
    live for the whole run, and the collector would scan them about 90 times on the way:
    about 9 ms of a 100 ms import. So nothing is collected while importing; then what was
    imported is set aside for good (gc.freeze) and collection goes on as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        from fastio_dl.cli import entrypoint
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return entrypoint


def main() -> None:
    import_cli()()


if __name__ == "__main__":
    main()
