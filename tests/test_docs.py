from vmemtrace.docs import README, render


def test_readme_generated_sections_are_current():
    text = README.read_text()
    assert render(text) == text, "README.md is stale: run `.venv/bin/python -m vmemtrace.docs`"
