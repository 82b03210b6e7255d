"""fastio-dl: concurrent, verified, resumable downloads from Fast.io workspaces and shares."""

__version__ = "0.1.0"
