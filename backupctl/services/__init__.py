"""The verbs: each takes a config and a request, does the work, and returns data for the CLI to render."""
