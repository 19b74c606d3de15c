"""spamo: SPAMO spatial multi-omics integration, sparse and scalable.

The Python API (`spamo.api`): `spamo.fit`, `spamo.tune`, `spamo.evaluate`, `spamo.analyze`, `spamo.load`, with
`spamo.SpamoConfig`, `spamo.RunResult`, `spamo.TuneResult` and `spamo.SpamoInputError`. They are imported on first
use (PEP 562), so `import spamo` stays light: torch, scanpy and Ray load only when a function is called.
"""

__version__ = "0.1.0"

# each name from the module that owns it, so that `spamo.fit` does not load Ray (spamo.api gathers all of them)
_API = {
    "fit": "spamo.api_run", "load": "spamo.api_run", "RunResult": "spamo.api_run",
    "tune": "spamo.api_search", "evaluate": "spamo.api_search", "TuneResult": "spamo.api_search",
    "analyze": "spamo.api_analyze", "SpamoConfig": "spamo.config", "SpamoInputError": "spamo.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spamo' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
