"""Fleet: detection over many runs as Ray tasks, into a findings lake any engine reads (lake.py)."""
