"""vmemtrace's pipeline: event schema, run store, importers, normalisation."""

__version__ = "0.1.0"
