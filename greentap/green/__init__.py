"""Green I/O: the only layer on gevent's hub.

:class:`~greentap.green.fdio.GreenFd` (budgeted cooperative reads and a safe
close, for every port kind), :class:`~greentap.green.polled.Tap` and
:class:`~greentap.green.polled.PolledTap`, and the wire's relay
(:mod:`~greentap.green.relay`, with its C loop).
"""
