"""The pure core: bytes in, decisions out.  No system calls, no gevent.

Frame codecs (:mod:`~greentap.core.ethernet`, :mod:`~greentap.core.vxlan`,
:mod:`~greentap.core.pcap`), the MAC table and switch decision
(:mod:`~greentap.core.switching`), rate limits, counters, frame geometry,
interface names, ``struct ifreq`` packing, endpoint parsing, strict number
parsing, the errno-to-verdict table and the kernel's constants.  Everything
here is deterministic: time is passed in by the caller.
"""
