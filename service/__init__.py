"""polypstream: real-time polyp segmentation of colonoscopy video, served over gRPC."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("polypstream")  # the installed package's metadata
except importlib.metadata.PackageNotFoundError:  # a bare checkout run as `python -m service`
    __version__ = "unknown"
