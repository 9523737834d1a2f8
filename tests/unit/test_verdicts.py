"""The one errno-to-verdict table, as the Python and C loops read it."""

import errno

from greentap.core.verdicts import WRITE_VERDICTS, Verdict, drop_reason, table, write_verdict
from greentap.green import relay


def test_each_errno_means_what_the_readme_says():
    """EAGAIN and ENOBUFS are backpressure, EIO a down link, EINVAL and EMSGSIZE a
    refused frame, no route or a refused connection an unreachable peer, EINTR a
    retry; anything else breaks the endpoint."""
    expected = {
        errno.EAGAIN: Verdict.BACKPRESSURE,
        errno.ENOBUFS: Verdict.BACKPRESSURE,
        errno.EIO: Verdict.LINK_DOWN,
        errno.EINVAL: Verdict.REFUSED,
        errno.EMSGSIZE: Verdict.REFUSED,
        errno.ECONNREFUSED: Verdict.UNREACHABLE,
        errno.ENETUNREACH: Verdict.UNREACHABLE,
        errno.EHOSTUNREACH: Verdict.UNREACHABLE,
        errno.EINTR: Verdict.RETRY,
        errno.EBADF: Verdict.FAILED,
        errno.EPIPE: Verdict.FAILED,
        None: Verdict.FAILED,
    }
    assert {code: write_verdict(code) for code in expected} == expected


def test_drop_reasons_name_the_shared_meanings():
    """Counters are named by meaning where errnos share one, else by the errno."""
    assert drop_reason(errno.EAGAIN) == drop_reason(errno.ENOBUFS) == "backpressure"
    assert drop_reason(errno.EMSGSIZE) == "too_big"
    assert drop_reason(errno.ENETUNREACH) == "unreachable"
    assert drop_reason(errno.EPERM) == "EPERM"


def test_the_c_loop_gets_the_same_table():
    """The bytes handed to the C loop are the table, errno by errno; unknown is FAILED."""
    raw = table()
    assert len(raw) == 256
    assert all(raw[code] == verdict for code, verdict in WRITE_VERDICTS.items())
    assert raw[255] == Verdict.FAILED
    if relay.LOOP == "c":  # the C loop checked the names of the verdicts when it loaded
        assert relay._c.VERDICTS == tuple(v.name for v in Verdict)
