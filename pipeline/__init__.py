"""vmemtrace's pipeline: event schema, run store, importers, normalisation and the CLI."""

__version__ = "0.1.0"
