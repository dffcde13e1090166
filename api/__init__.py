"""HTTP API of slot-queue: a Flask app served by gunicorn (``api.app:create_app()``)."""
