"""Reports of findings: a self-contained HTML page and CSV for machines."""
