"""WSGI entry point: `gunicorn -c gunicorn.conf.py` serves `wsgi:app`."""
from webui_api import create_app

app = create_app()
