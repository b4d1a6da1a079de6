"""Prefect flows and the `invdes` command line: thin orchestration over design/."""
