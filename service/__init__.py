"""polypstream: real-time polyp segmentation of colonoscopy video, served over gRPC."""

__version__ = "0.1.0"
