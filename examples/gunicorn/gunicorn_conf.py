"""gunicorn settings that run one http-broker for the whole group: the master starts it
before it forks any worker, a reload (HUP) keeps it, and it stops with the master.
See ``broker/gunicorn.py`` for what the hooks do and the ``HTTP_BROKER_*`` settings.

    gunicorn -c examples/gunicorn/gunicorn_conf.py -w 4 examples.gunicorn.wsgi_app:app
"""

from broker.gunicorn import on_exit, on_starting  # noqa: F401
