from vmemtrace.cli import app

app(prog_name="vmemtrace")
