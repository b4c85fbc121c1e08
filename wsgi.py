"""The WSGI entry point for any WSGI server: ``gunicorn wsgi:app``.

Logging is set up as ``serve`` sets it up (our format, ``logging.format``, on stderr)
unless the server already gave the root logger a handler of its own."""

from app import create_app
from app.logconfig import configure_unless_set
from app.settings import Settings

settings = Settings.load()
configure_unless_set(settings.config.logging.format)
app = create_app(settings)
