"""Importers: traces users already have, turned into schema-v1 runs."""
