"""`jevons serve`: the OpenAI/DeepSeek-compatible HTTP server.

Kept import-free so that `jevons --help` (which registers the serve
subcommand from server/cli.py) does not pull in FastAPI or torch."""
