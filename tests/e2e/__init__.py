"""End-to-end tests: the real server processes, a real client library, a real browser."""
