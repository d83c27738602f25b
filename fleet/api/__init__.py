"""The HTTP API (server and typed client). The CLI and the TUI talk only to this."""
