"""spamo: SPAMO spatial multi-omics integration, sparse and scalable."""

__version__ = "0.1.0"
