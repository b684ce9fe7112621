"""vmemtrace's front: the command line and the README generator, above collectors, pipeline,
queries and reports (which never import from here)."""
