from fastio_dl.cli import entrypoint

entrypoint()
