"""The application: what ``tap-forward`` is made of, above the library.

:class:`~greentap.app.service.Service` (start, stop, signals, periodic jobs,
a WSGI server) under both the :class:`~greentap.app.forwarder.Forwarder`
and the workers' :class:`~greentap.app.supervisor.Supervisor`; the worker's
own entry point (:mod:`~greentap.app.worker`); the start-up policy
(:mod:`~greentap.app.startup`); exit statuses, metrics, ``--stats``, the
logging preset, privileges and the demo.
"""
