"""Devices: the blocking layer.  System calls, no gevent.

:class:`~greentap.device.tun.TapDevice` (the ``/dev/net/tun`` fd and its
ioctls), :class:`~greentap.device.link.Link` (an interface's link settings),
:class:`~greentap.device.fd.FdHolder` (the one owner of each fd) and
:mod:`~greentap.device.netns` (entering a network namespace).
"""
