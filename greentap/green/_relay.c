/*
 * greentap.green._relay: the wire's inner loop in C.
 *
 * relay_batch() moves up to `budget` frames from one fd to another: one
 * read(2) and one write(2) per frame, exactly what the pure-Python loop in
 * greentap/green/relay.py does, without the interpreter's cost per frame.
 * It never blocks (both fds are non-blocking), never waits and never touches
 * the gevent hub: it returns after `budget` frames, on EAGAIN from the
 * source, or on an error that the caller must turn into an exception.  The
 * caller yields to the hub between batches.
 *
 * A failed write is classified through the verdict table that
 * greentap/core/verdicts.py hands to set_verdicts() when the module loads:
 * the same table the Python loops use, so the two cannot disagree.  Until
 * it is set, every errno is FAILED.  A destination fd < 0 (already failed)
 * counts every frame as an error.
 *
 * relay_batch() parses nothing: frames are moved as opaque bytes.
 *
 * ring_batch() is the same loop for a packet socket's TPACKET_V3 receive
 * ring (greentap/core/tpacket.py and greentap/device/packet.py hold its
 * pure-Python twin and the layout): frames are written to the destination
 * straight out of the mapped ring, a VLAN tag the kernel moved into the
 * frame's metadata put back with writev().  The ring is written by the
 * kernel and every offset and length in it is checked against its block
 * before use, exactly as the Python twin checks them; a block that does not
 * add up is given back unread and counted.
 *
 * relay_batch_to_ring() sends a TAP's frames through a packet socket's
 * transmit ring: copied into its slots, one send() a batch.
 *
 * recv_datagrams() reads a batch of UDP datagrams with one recvmmsg(), each
 * into its own slot of a buffer, with the size UDP GRO joined them at: what
 * greentap/ports/superframes.py's loop of recvmsg_into() calls does, one
 * system call for the batch.  It parses nothing the datagrams hold.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Why a batch ended. */
enum { END_BUDGET = 0, END_WAIT = 1, END_EOF = 2, END_READ_ERROR = 3, END_WRITE_ERROR = 4 };

/* greentap.core.verdicts.Verdict, in order (checked at import through VERDICTS). */
enum { V_RETRY, V_BACKPRESSURE, V_LINK_DOWN, V_REFUSED, V_UNREACHABLE, V_FAILED, V_COUNT };
static const char *verdict_names[V_COUNT] = {
    "RETRY", "BACKPRESSURE", "LINK_DOWN", "REFUSED", "UNREACHABLE", "FAILED",
};

#define TABLE_SIZE 256
static unsigned char verdicts[TABLE_SIZE];

static int
verdict_of(int err)
{
    if (err < 0 || err >= TABLE_SIZE)
        return V_FAILED;
    return verdicts[err];
}

/* Count one write by its verdict (-1: written) where the table says; return 1
 * when the verdict was FAILED (the frame is then the caller's to count). */
static int
tally(int verdict, long long n, long long *tx, long long *tx_bytes, long long *dropped,
      long long *link_down, long long *errors)
{
    if (verdict < 0) {
        (*tx)++;
        *tx_bytes += n;
    } else if (verdict == V_BACKPRESSURE) {
        (*dropped)++;
    } else if (verdict == V_LINK_DOWN) {
        (*link_down)++;
    } else if (verdict != V_FAILED) {
        (*errors)++; /* this frame was refused; the next may pass */
    } else {
        return 1;
    }
    return 0;
}

/* One write() of a frame, repeated while its verdict is RETRY: -1 once written,
 * else the verdict (errno is the write's). */
static int
write_classified(int fd, const void *data, size_t n)
{
    int verdict;
    do {
        verdict = write(fd, data, n) >= 0 ? -1 : verdict_of(errno);
    } while (verdict == V_RETRY);
    return verdict;
}

static PyObject *
set_verdicts(PyObject *self, PyObject *arg)
{
    Py_buffer table;
    if (PyObject_GetBuffer(arg, &table, PyBUF_SIMPLE) < 0)
        return NULL;
    if (table.len != TABLE_SIZE) {
        PyBuffer_Release(&table);
        return PyErr_Format(PyExc_ValueError, "the verdict table must have %d entries",
                            TABLE_SIZE);
    }
    const unsigned char *entries = table.buf;
    for (Py_ssize_t i = 0; i < table.len; i++) {
        if (entries[i] >= V_COUNT) {
            PyBuffer_Release(&table);
            return PyErr_Format(PyExc_ValueError, "unknown verdict %d for errno %zd",
                                entries[i], i);
        }
    }
    memcpy(verdicts, entries, TABLE_SIZE);
    PyBuffer_Release(&table);
    Py_RETURN_NONE;
}

/* One read of a frame: its length; or 0 when the batch ends (*end and *err
 * say why: end of file, nothing to read, an error); or -1 after EINTR. */
static ssize_t
read_one(int fd, char *data, size_t size, int *end, int *err)
{
    ssize_t n = read(fd, data, size);
    if (n > 0)
        return n;
    if (n == 0) {
        *end = END_EOF;
        return 0;
    }
    if (errno == EINTR)
        return -1;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        *end = END_WAIT;
    } else {
        *end = END_READ_ERROR;
        *err = errno;
    }
    return 0;
}

static PyObject *
relay_batch(PyObject *self, PyObject *args)
{
    int in_fd, out_fd, budget;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iiw*i", &in_fd, &out_fd, &buf, &budget))
        return NULL;
    long long rx = 0, rx_bytes = 0, tx = 0, tx_bytes = 0;
    long long dropped = 0, link_down = 0, errors = 0;
    int end = END_BUDGET, err = 0;
    char *data = buf.buf;
    size_t size = (size_t)buf.len;

    for (int i = 0; i < budget; i++) {
        ssize_t n = read_one(in_fd, data, size, &end, &err);
        if (n < 0) {
            i--; /* EINTR */
            continue;
        }
        if (n == 0)
            break;
        rx++;
        rx_bytes += n;
        if (out_fd < 0) {
            errors++;
            continue;
        }
        int verdict = write_classified(out_fd, data, (size_t)n);
        if (tally(verdict, n, &tx, &tx_bytes, &dropped, &link_down, &errors)) {
            end = END_WRITE_ERROR;
            err = errno;
            break; /* this frame is the caller's to count */
        }
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(iiLLLLLLL)", end, err, rx, rx_bytes, tx, tx_bytes, dropped,
                         link_down, errors);
}

/* --- to a socket, in batches ------------------------------------------------ */

#define SEND_BATCH 64
#define VNET_NEEDS_CSUM 1
#define MAX_HEADER 16 /* vnet header sizes are 10 or 12 */

struct counts {
    long long rx, rx_bytes, tx, tx_bytes, dropped, link_down, errors;
};

/* read_one() again after EINTR; a frame read is counted in c (rx, rx_bytes). */
static ssize_t
read_counted(int fd, char *data, size_t room, int *end, int *err, struct counts *c)
{
    ssize_t n;
    do {
        n = read_one(fd, data, room, end, err);
    } while (n < 0);
    if (n > 0) {
        c->rx++;
        c->rx_bytes += n;
    }
    return n;
}

/* Count the n messages sendmmsg() sent: packets and bytes (every iovec). */
static void
count_sent(const struct mmsghdr *msgs, int n, struct counts *c)
{
    for (int j = 0; j < n; j++) {
        c->tx++;
        for (size_t v = 0; v < msgs[j].msg_hdr.msg_iovlen; v++)
            c->tx_bytes += (long long)msgs[j].msg_hdr.msg_iov[v].iov_len;
    }
}

/* Send the k frames gathered in msgs with as few sendmmsg() calls as the
 * errors allow: a failed message is counted and skipped.  With `failures`
 * (a UDP socket, which never fails for good) each refusal is counted there by
 * errno for the caller to name.  Without, it is classified by the verdict
 * table: return -1 on a FAILED verdict (*err set; that frame is the caller's
 * to count, the frames after it count as errors), else 0. */
static int
flush_frames(int fd, struct mmsghdr *msgs, int k, struct counts *c, int *err,
             long long *failures)
{
    int at = 0;
    while (at < k) {
        int sent = sendmmsg(fd, msgs + at, (unsigned int)(k - at), MSG_DONTWAIT);
        if (sent > 0) {
            count_sent(msgs + at, sent, c);
            at += sent;
            continue;
        }
        int verdict = verdict_of(errno);
        if (verdict == V_RETRY)
            continue;
        if (failures != NULL) {
            failures[errno >= 0 && errno < TABLE_SIZE ? errno : 0]++;
        } else if (verdict == V_BACKPRESSURE) {
            c->dropped++;
        } else if (verdict == V_LINK_DOWN) {
            c->link_down++;
        } else if (verdict != V_FAILED) {
            c->errors++;
        } else {
            *err = errno;
            c->errors += k - at - 1;
            return -1;
        }
        at++; /* that frame was refused or dropped: on with the next */
    }
    return 0;
}

static PyObject *
relay_batch_to_socket(PyObject *self, PyObject *args)
{
    int in_fd, out_fd, budget;
    Py_ssize_t max_frame;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iiw*in", &in_fd, &out_fd, &buf, &budget, &max_frame))
        return NULL;
    if (max_frame < 1 || buf.len < max_frame) {
        PyBuffer_Release(&buf);
        return PyErr_Format(PyExc_ValueError, "the buffer must hold at least one largest frame");
    }
    struct counts c = {0};
    struct mmsghdr msgs[SEND_BATCH];
    struct iovec iovs[SEND_BATCH];
    memset(msgs, 0, sizeof msgs);
    int end = END_BUDGET, err = 0, k = 0;
    char *data = buf.buf;
    size_t size = (size_t)buf.len, used = 0;

    for (int i = 0; i < budget; i++) {
        if (k == SEND_BATCH || size - used < (size_t)max_frame) {
            if (out_fd < 0)
                c.errors += k;
            else if (flush_frames(out_fd, msgs, k, &c, &err, NULL) < 0) {
                end = END_WRITE_ERROR;
                k = 0;
                break;
            }
            k = 0;
            used = 0;
        }
        /* Room for the largest frame: never truncated. */
        ssize_t n = read_counted(in_fd, data + used, size - used, &end, &err, &c);
        if (n == 0)
            break;
        iovs[k].iov_base = data + used;
        iovs[k].iov_len = (size_t)n;
        msgs[k].msg_hdr.msg_iov = &iovs[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
        used += (size_t)n;
        k++;
    }
    if (k) { /* what was read goes out before the batch returns */
        int flush_err = 0;
        if (out_fd < 0)
            c.errors += k;
        else if (flush_frames(out_fd, msgs, k, &c, &flush_err, NULL) < 0) {
            /* A write error outranks how the reads ended: report it. */
            end = END_WRITE_ERROR;
            err = flush_err;
        }
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(iiLLLLLLL)", end, err, c.rx, c.rx_bytes, c.tx, c.tx_bytes, c.dropped,
                         c.link_down, c.errors);
}

/* --- to a packet socket's transmit ring ------------------------------------ *
 *
 * relay_batch_to_ring() is relay_batch_to_socket() for a packet socket with a
 * TPACKET_V2 transmit ring (greentap/core/txring.py has the layout and the
 * rule both sides keep; greentap/green/txring.py the pure-Python twin): each
 * frame is read from the TAP into `scratch` (it holds the source's largest
 * frame, so nothing is cut), copied into the next slot, and the batch leaves
 * with one send() of no data, instead of a message per frame.  (Reading
 * straight into the slot measured no faster: readv() into a slot and the
 * scratch behind it costs what the copy saves.)  A frame larger than a slot
 * (a super-frame) is sent whole from `scratch` with sendmsg() on `big_fd`
 * (the receive socket, which has no transmit ring), after the slots filled
 * before it, so frames leave in the order read.  The
 * slots are written by us and read back only for the kernel's verdict on each
 * (its status and our own tp_len): nothing the network sent is parsed but a
 * frame's vnet header, whose two first fields are read from within the frame.
 */

#define TX_DATA 32 /* TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where a slot's frame starts */
#define TX_LEN 4   /* offset of tp_len */
#define TX_LINEAR 128
#define VNET_HLEN 10
#define VNET_HDR_LEN 2 /* offset of hdr_len in struct virtio_net_hdr */
enum { TX_AVAILABLE = 0, TX_SEND_REQUEST = 1, TX_WRONG_FORMAT = 4 };

struct tx_ring {
    unsigned char *base;
    size_t frame_size;
    long count;
};

static unsigned char *
tx_slot(const struct tx_ring *r, long i)
{
    return r->base + (size_t)(i % r->count) * r->frame_size;
}

/* The status word is shared with the kernel: read and written atomically, in order. */
static uint32_t
tx_status(const unsigned char *slot)
{
    return __atomic_load_n((const uint32_t *)slot, __ATOMIC_ACQUIRE);
}

static void
tx_set_status(unsigned char *slot, uint32_t status)
{
    __atomic_store_n((uint32_t *)slot, status, __ATOMIC_RELEASE);
}

static uint32_t
tx_len(const unsigned char *slot)
{
    uint32_t n;
    memcpy(&n, slot + TX_LEN, sizeof n);
    return n;
}

/* greentap.core.txring.hint_linear(): a small frame that is not a super-frame
 * is copied whole into the packet's head (hdr_len raised to its length, up to
 * TX_LINEAR), so the receiving stack need not pull its headers out of the
 * ring's pages. */
static void
tx_hint_linear(unsigned char *frame, size_t n)
{
    if (n <= VNET_HLEN || frame[1] != 0)
        return;
    uint16_t want = (uint16_t)(n - VNET_HLEN > TX_LINEAR ? TX_LINEAR : n - VNET_HLEN), have;
    memcpy(&have, frame + VNET_HDR_LEN, sizeof have);
    if (have < want)
        memcpy(frame + VNET_HDR_LEN, &want, sizeof want);
}

/* Hand the k slots filled from *head to the kernel: send() until each was
 * taken, or dropped by its verdict.  A slot the kernel stopped at (it stays
 * SEND_REQUEST, or WRONG_FORMAT) gets the verdict of send()'s errno (none:
 * no room in the socket's send buffer, ENOBUFS; or a malformed frame,
 * EINVAL).  RETRY sends again; one frame REFUSED (or UNREACHABLE) is counted
 * and the frames after it move down a slot and go again; BACKPRESSURE and
 * LINK_DOWN drop it and the rest (the queue is full, the link down), FAILED
 * too, returning -1 with *err set (the frame it hit is the caller's to count,
 * the rest are errors).  Slots given back are AVAILABLE again and *head ends
 * at the kernel's head: the next slot to fill. */
static int
flush_ring(int fd, const struct tx_ring *r, long *head, int k, struct counts *c, int *err)
{
    long first = *head;
    int p = 0, tries = 0, rc = 0;
    while (p < k) {
        int e = send(fd, NULL, 0, MSG_DONTWAIT) < 0 ? errno : 0;
        for (; p < k; p++) {
            const unsigned char *s = tx_slot(r, first + p);
            uint32_t status = tx_status(s);
            if (status == TX_SEND_REQUEST || status == TX_WRONG_FORMAT)
                break;
            c->tx++;
            c->tx_bytes += tx_len(s);
        }
        if (p == k)
            break;
        unsigned char *stuck = tx_slot(r, first + p);
        if (e == 0)
            e = tx_status(stuck) == TX_WRONG_FORMAT ? EINVAL : ENOBUFS;
        int verdict = verdict_of(e);
        if (verdict == V_RETRY && tries++ < k)
            continue;
        if (verdict == V_REFUSED || verdict == V_UNREACHABLE) {
            c->errors++;
            for (int q = p + 1; q < k; q++) {
                unsigned char *to = tx_slot(r, first + q - 1);
                const unsigned char *from = tx_slot(r, first + q);
                uint32_t n = tx_len(from);
                if (n > r->frame_size - TX_DATA) /* ours, but in memory the kernel shares */
                    n = (uint32_t)(r->frame_size - TX_DATA);
                memcpy(to + TX_LEN, &n, sizeof n);
                memcpy(to + TX_DATA, from + TX_DATA, n);
                tx_set_status(to, TX_SEND_REQUEST);
            }
            tx_set_status(tx_slot(r, first + k - 1), TX_AVAILABLE);
            k--;
            continue;
        }
        int rest = k - p;
        for (int q = p; q < k; q++)
            tx_set_status(tx_slot(r, first + q), TX_AVAILABLE);
        if (verdict == V_LINK_DOWN) {
            c->link_down += rest;
        } else if (verdict == V_FAILED) {
            *err = e;
            c->errors += rest - 1;
            rc = -1;
        } else {
            c->dropped += rest; /* BACKPRESSURE, or a RETRY that never ended */
        }
        k = p;
    }
    *head = (first + k) % r->count;
    return rc;
}

static PyObject *
relay_batch_to_ring(PyObject *self, PyObject *args)
{
    int in_fd, ring_fd, big_fd, budget, header;
    Py_ssize_t frame_size;
    Py_buffer ring, scratch;
    PyObject *cursor;
    if (!PyArg_ParseTuple(args, "iiiw*nO!w*ii", &in_fd, &ring_fd, &big_fd, &ring, &frame_size,
                          &PyList_Type, &cursor, &scratch, &budget, &header))
        return NULL;
    long head = -1;
    if (PyList_GET_SIZE(cursor) == 1)
        head = PyLong_AsLong(PyList_GET_ITEM(cursor, 0));
    if (frame_size < TX_DATA + VNET_HLEN + 14 || frame_size % 16 || ring.len < frame_size ||
        ring.len % frame_size || head < 0 || head >= ring.len / frame_size ||
        (header != 0 && header != VNET_HLEN)) {
        PyBuffer_Release(&ring);
        PyBuffer_Release(&scratch);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError,
                            "a ring of whole slots, a cursor [slot] within it, a header of 0 or 10");
        return NULL;
    }
    struct tx_ring r = {ring.buf, (size_t)frame_size, (long)(ring.len / frame_size)};
    const size_t room = (size_t)frame_size - TX_DATA;
    struct counts c = {0};
    int end = END_BUDGET, err = 0, k = 0;

    for (int i = 0; i < budget; i++) {
        if (k == r.count) { /* every slot filled: they leave before the next is read */
            int failed = flush_ring(ring_fd, &r, &head, k, &c, &err);
            k = 0;
            if (failed < 0) {
                end = END_WRITE_ERROR;
                break;
            }
        }
        unsigned char *slot = tx_slot(&r, head + k);
        /* No free slot (every one filled, or still held by the driver: a full
         * queue): the frame is read all the same, and dropped. */
        int free = tx_status(slot) == TX_AVAILABLE;
        ssize_t n = read_counted(in_fd, scratch.buf, (size_t)scratch.len, &end, &err, &c);
        if (n == 0)
            break;
        if (!free) {
            c.dropped++;
            continue;
        }
        if (ring_fd < 0) {
            c.errors++;
            continue;
        }
        if (n < header + 14) { /* a runt: the kernel would refuse it (EINVAL) */
            c.errors++;
            continue;
        }
        if ((size_t)n <= room) {
            uint32_t len = (uint32_t)n;
            memcpy(slot + TX_DATA, scratch.buf, (size_t)n);
            if (header) /* without a vnet header the kernel copies what it needs */
                tx_hint_linear(slot + TX_DATA, (size_t)n);
            memcpy(slot + TX_LEN, &len, sizeof len);
            tx_set_status(slot, TX_SEND_REQUEST);
            k++;
            continue;
        }
        /* Larger than a slot: what is filled leaves first, then this frame whole. */
        if (k && flush_ring(ring_fd, &r, &head, k, &c, &err) < 0) {
            k = 0;
            c.errors++; /* the frame in hand */
            end = END_WRITE_ERROR;
            break;
        }
        k = 0;
        struct iovec whole = {scratch.buf, (size_t)n};
        struct mmsghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_hdr.msg_iov = &whole;
        msg.msg_hdr.msg_iovlen = 1;
        if (flush_frames(big_fd, &msg, 1, &c, &err, NULL) < 0) {
            end = END_WRITE_ERROR;
            break;
        }
    }
    if (k && flush_ring(ring_fd, &r, &head, k, &c, &err) < 0)
        end = END_WRITE_ERROR; /* a write error outranks how the reads ended */
    PyBuffer_Release(&ring);
    PyBuffer_Release(&scratch);
    PyObject *at = PyLong_FromLong(head);
    if (at == NULL || PyList_SetItem(cursor, 0, at) < 0)
        return NULL;
    return Py_BuildValue("(iiLLLLLLL)", end, err, c.rx, c.rx_bytes, c.tx, c.tx_bytes, c.dropped,
                         c.link_down, c.errors);
}

/* --- to a UDP peer, in batches ------------------------------------------------ */

#define END_HANDBACK 5  /* a frame for the caller to send: it needs cutting or finishing */

/*
 * relay_batch_to_udp(in_fd, out_fd, buffer, budget, max_frame, header, prefix, address)
 *   -> (end, errno, rx, rx_bytes, tx, tx_bytes, handback_offset, handback_length, failures)
 *
 * relay_batch_to_socket() for a tunnel with one peer: each frame read leaves as
 * one datagram to `address` (a packed sockaddr), `prefix` (a VXLAN header, or
 * nothing) before it and its first `header` bytes (a vnet header) left out.  A
 * frame that needs work first (a vnet header asking for segmentation or a
 * checksum, or a runt) ends the batch: what was gathered is sent, and the frame
 * stays in the buffer at handback_offset for the caller (end 5).  failures:
 * {errno: datagrams} the kernel refused.
 */
static PyObject *
relay_batch_to_udp(PyObject *self, PyObject *args)
{
    int in_fd, out_fd, budget, header;
    Py_ssize_t max_frame;
    Py_buffer buf, prefix, address;
    if (!PyArg_ParseTuple(args, "iiw*iniy*y*", &in_fd, &out_fd, &buf, &budget, &max_frame,
                          &header, &prefix, &address))
        return NULL;
    PyObject *result = NULL;
    if (max_frame < 1 || buf.len < max_frame || header < 0 || header > MAX_HEADER ||
        address.len > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
        PyErr_SetString(PyExc_ValueError, "relay_batch_to_udp: bad buffer, header or address");
        goto done;
    }
    struct counts c = {0};
    long long failures[TABLE_SIZE];
    memset(failures, 0, sizeof failures);
    struct mmsghdr msgs[SEND_BATCH];
    struct iovec iovs[SEND_BATCH][2];
    memset(msgs, 0, sizeof msgs);
    int end = END_BUDGET, err = 0, k = 0;
    char *data = buf.buf;
    size_t size = (size_t)buf.len, used = 0;
    Py_ssize_t back_at = -1, back_len = 0;

    for (int i = 0; i < budget; i++) {
        if (k == SEND_BATCH || size - used < (size_t)max_frame) {
            flush_frames(out_fd, msgs, k, &c, &err, failures);
            k = 0;
            used = 0;
        }
        ssize_t n = read_counted(in_fd, data + used, size - used, &end, &err, &c);
        if (n == 0)
            break;
        const unsigned char *f = (const unsigned char *)data + used;
        if (n < header + 14 || (header && (f[1] || (f[0] & VNET_NEEDS_CSUM)))) {
            back_at = (Py_ssize_t)used;
            back_len = n;
            end = END_HANDBACK;
            break;
        }
        int v = 0;
        if (prefix.len) {
            iovs[k][v].iov_base = prefix.buf;
            iovs[k][v++].iov_len = (size_t)prefix.len;
        }
        iovs[k][v].iov_base = data + used + header;
        iovs[k][v++].iov_len = (size_t)n - (size_t)header;
        msgs[k].msg_hdr.msg_iov = iovs[k];
        msgs[k].msg_hdr.msg_iovlen = (size_t)v;
        msgs[k].msg_hdr.msg_name = address.buf;
        msgs[k].msg_hdr.msg_namelen = (socklen_t)address.len;
        used += (size_t)n;
        k++;
    }
    flush_frames(out_fd, msgs, k, &c, &err, failures); /* what was read goes out first */
    PyObject *failed = PyDict_New();
    if (failed == NULL)
        goto done;
    for (int e = 0; e < TABLE_SIZE; e++) {
        if (!failures[e])
            continue;
        PyObject *key = PyLong_FromLong(e), *value = PyLong_FromLongLong(failures[e]);
        if (key == NULL || value == NULL || PyDict_SetItem(failed, key, value) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_DECREF(failed);
            goto done;
        }
        Py_DECREF(key);
        Py_DECREF(value);
    }
    result = Py_BuildValue("(iiLLLLnnN)", end, err, c.rx, c.rx_bytes, c.tx, c.tx_bytes, back_at,
                           back_len, failed);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&address);
    return result;
}

/* --- the TPACKET_V3 ring ------------------------------------------------ */

/* linux/if_packet.h: tpacket_block_desc / tpacket_hdr_v1 and tpacket3_hdr offsets. */
enum {
    BLOCK_HEADER_SIZE = 48, BLOCK_STATUS = 8, BLOCK_COUNT = 12, BLOCK_FIRST = 16,
    PKT_HEADER_SIZE = 40, /* up to and with hv1 (greentap.core.tpacket.PACKET_HEADER) */
    PKT_NEXT = 0, PKT_SNAPLEN = 12, PKT_LEN = 16, PKT_STATUS = 20, PKT_MAC = 24,
    PKT_VLAN_TCI = 32, PKT_VLAN_TPID = 36,
};
#define TP_STATUS_USER 0x1u
#define TP_STATUS_VLAN_VALID 0x10u
#define TP_STATUS_VLAN_TPID_VALID 0x40u
#define VNET_F_NEEDS_CSUM 1
#define VNET_CSUM_START 6
#define MAC_ADDRESSES 12

static uint32_t
u32_at(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint16_t
u16_at(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Write one frame (with its vnet header) to fd, a tag put back after the MAC
 * addresses when tag_tci >= 0; return the bytes written or -1 (errno set). */
static ssize_t
write_frame(int fd, const unsigned char *frame, size_t length, size_t header, long tag_tpid,
            long tag_tci)
{
    if (tag_tci < 0)
        return write(fd, frame, length);
    unsigned char head[MAX_HEADER + MAC_ADDRESSES];
    unsigned char tag[4] = {(unsigned char)(tag_tpid >> 8), (unsigned char)tag_tpid,
                            (unsigned char)(tag_tci >> 8), (unsigned char)tag_tci};
    size_t head_len = header + MAC_ADDRESSES;
    memcpy(head, frame, head_len);
    if (header && (head[0] & VNET_F_NEEDS_CSUM)) {
        /* The checksum starts 4 bytes later once the tag is back (as a TAP expects). */
        uint16_t start = u16_at(head + VNET_CSUM_START);
        start = (uint16_t)(start + 4);
        memcpy(head + VNET_CSUM_START, &start, sizeof start);
    }
    struct iovec iov[3] = {
        {head, head_len},
        {tag, sizeof tag},
        {(void *)(frame + head_len), length - head_len},
    };
    return writev(fd, iov, 3);
}

static PyObject *
ring_batch(PyObject *self, PyObject *args)
{
    Py_buffer ring;
    long long block_size, block_count;
    PyObject *cursor;
    int out_fd, budget, header;
    if (!PyArg_ParseTuple(args, "w*LLO!iii", &ring, &block_size, &block_count, &PyList_Type,
                          &cursor, &out_fd, &budget, &header))
        return NULL;
    long long state[4];
    if (PyList_GET_SIZE(cursor) != 4 || block_size < BLOCK_HEADER_SIZE + PKT_HEADER_SIZE ||
        block_count < 1 || block_size > ring.len / block_count || header < 0 ||
        header > MAX_HEADER) {
        PyBuffer_Release(&ring);
        return PyErr_Format(PyExc_ValueError, "ring_batch: bad geometry or cursor");
    }
    for (int i = 0; i < 4; i++) {
        state[i] = PyLong_AsLongLong(PyList_GET_ITEM(cursor, i));
        if (state[i] == -1 && PyErr_Occurred()) {
            PyBuffer_Release(&ring);
            return NULL;
        }
    }
    long long block = state[0], offset = state[1], left = state[2], taken = state[3];
    if (block < 0 || block >= block_count || left < 0) {
        PyBuffer_Release(&ring);
        return PyErr_Format(PyExc_ValueError, "ring_batch: cursor out of range");
    }
    unsigned char *data = ring.buf;
    long long rx = 0, rx_bytes = 0, tx = 0, tx_bytes = 0, dropped = 0, link_down = 0;
    long long errors = 0, truncated = 0, runts = 0, corrupt = 0;
    int end = END_BUDGET, err = 0, done = 0;

    while (done < budget) {
        long long base = block * block_size, limit = base + block_size;
        if (taken && left) {
            if (offset < base || offset + PKT_HEADER_SIZE > limit)
                goto corrupt;
            const unsigned char *h = data + offset;
            uint32_t next = u32_at(h + PKT_NEXT), snap = u32_at(h + PKT_SNAPLEN);
            uint32_t length = u32_at(h + PKT_LEN), status = u32_at(h + PKT_STATUS);
            long long mac = u16_at(h + PKT_MAC), start = offset + mac - header;
            if (mac - header < PKT_HEADER_SIZE || start + header + (long long)snap > limit)
                goto corrupt;
            if (left > 1 && next < PKT_HEADER_SIZE)
                goto corrupt;
            offset += next;
            left--;
            done++;
            if (snap < length) {
                truncated++;
                continue;
            }
            long tci = -1, tpid = 0x8100;
            uint32_t vtci = u32_at(h + PKT_VLAN_TCI);
            if ((status & TP_STATUS_VLAN_VALID) || vtci) {
                tci = (long)(vtci & 0xFFFF);
                if (status & TP_STATUS_VLAN_TPID_VALID)
                    tpid = u16_at(h + PKT_VLAN_TPID);
                if (snap < MAC_ADDRESSES) {
                    runts++;
                    continue;
                }
            }
            size_t n = (size_t)header + snap + (tci >= 0 ? 4 : 0);
            rx++;
            rx_bytes += (long long)n;
            if (out_fd < 0) {
                errors++;
                continue;
            }
            int verdict;
            do {
                verdict = write_frame(out_fd, data + start, (size_t)header + snap, (size_t)header,
                                      tpid, tci) >= 0
                              ? -1
                              : verdict_of(errno);
            } while (verdict == V_RETRY);
            if (tally(verdict, (long long)n, &tx, &tx_bytes, &dropped, &link_down, &errors)) {
                end = END_WRITE_ERROR;
                err = errno;
                break;
            }
            continue;
        }
        if (taken) {
            goto give_back;
        }
        {
            uint32_t *status = (uint32_t *)(void *)(data + base + BLOCK_STATUS);
            if (!(__atomic_load_n(status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
                end = END_WAIT;
                break;
            }
            uint32_t count = u32_at(data + base + BLOCK_COUNT);
            uint32_t first = u32_at(data + base + BLOCK_FIRST);
            if (count && (first < BLOCK_HEADER_SIZE || first + PKT_HEADER_SIZE > block_size))
                goto corrupt;
            left = count;
            offset = base + first;
            taken = 1;
            continue;
        }
    corrupt:
        corrupt++;
    give_back:
        __atomic_store_n((uint32_t *)(void *)(data + base + BLOCK_STATUS), 0, __ATOMIC_RELEASE);
        block = (block + 1) % block_count;
        offset = left = taken = 0;
    }
    PyBuffer_Release(&ring);
    long long after[4] = {block, offset, left, taken};
    for (int i = 0; i < 4; i++) {
        PyObject *v = PyLong_FromLongLong(after[i]);
        if (v == NULL || PyList_SetItem(cursor, i, v) < 0)
            return NULL;
    }
    return Py_BuildValue("(iiLLLLLLLLLL)", end, err, rx, rx_bytes, tx, tx_bytes, dropped,
                         link_down, errors, truncated, runts, corrupt);
}

/* write_frames(out_fd, frames, start) -> (end, errno, next, tx, tx_bytes, dropped, link_down,
 * errors): frames[start:] written one per write(), each classified as relay_batch()
 * classifies its writes; ends early on a FAILED verdict (that frame the caller's
 * to count, `next` the one after it). */
static PyObject *
write_frames(PyObject *self, PyObject *args)
{
    int out_fd;
    PyObject *list;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "iO!n", &out_fd, &PyList_Type, &list, &start))
        return NULL;
    long long tx = 0, tx_bytes = 0, dropped = 0, link_down = 0, errors = 0;
    int end = END_BUDGET, err = 0;
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PyList_GET_SIZE(list); i++) {
        Py_buffer b;
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, i), &b, PyBUF_SIMPLE) < 0)
            return NULL;
        if (out_fd < 0) {
            errors++;
            PyBuffer_Release(&b);
            continue;
        }
        int verdict = write_classified(out_fd, b.buf, (size_t)b.len);
        Py_ssize_t n = b.len;
        PyBuffer_Release(&b);
        if (tally(verdict, n, &tx, &tx_bytes, &dropped, &link_down, &errors)) {
            end = END_WRITE_ERROR;
            err = errno;
            i++;
            break;
        }
    }
    return Py_BuildValue("(iinLLLLL)", end, err, i, tx, tx_bytes, dropped, link_down, errors);
}

#define RECV_MAX 64
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#define UDP_GRO_OPT 104

/* recv_datagrams(fd, buffer, start, slot, count) -> [(offset, n, size, truncated, host, port)] */
static PyObject *
recv_datagrams(PyObject *self, PyObject *args)
{
    int fd, count;
    Py_buffer b;
    Py_ssize_t start, slot;
    if (!PyArg_ParseTuple(args, "iw*nni", &fd, &b, &start, &slot, &count))
        return NULL;
    PyObject *out = NULL;
    if (slot < 1 || start < 0 || start > b.len) {
        PyErr_SetString(PyExc_ValueError, "recv_datagrams: bad start or slot");
        goto done;
    }
    Py_ssize_t room = (b.len - start) / slot;
    if (count > RECV_MAX)
        count = RECV_MAX;
    if (count > room)
        count = (int)room;
    if (count < 1) {
        out = PyList_New(0);
        goto done;
    }
    struct mmsghdr msgs[RECV_MAX];
    struct iovec iov[RECV_MAX];
    struct sockaddr_storage addrs[RECV_MAX];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[RECV_MAX];
    memset(msgs, 0, sizeof(msgs[0]) * count);
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = (char *)b.buf + start + i * slot;
        iov[i].iov_len = (size_t)slot;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
        msgs[i].msg_hdr.msg_control = ctrl[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(ctrl[i].buf);
    }
    int got = recvmmsg(fd, msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    if (got < 0) {
        PyErr_SetFromErrno(PyExc_OSError);  /* BlockingIOError for EAGAIN */
        goto done;
    }
    out = PyList_New(got);
    if (out == NULL)
        goto done;
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        Py_ssize_t n = msgs[i].msg_len, size = n;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO_OPT &&
                c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int gro;
                memcpy(&gro, CMSG_DATA(c), sizeof gro);
                if (gro > 0)
                    size = gro;
            }
        }
        char host[INET6_ADDRSTRLEN] = "";
        unsigned port = 0;
        if (addrs[i].ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&addrs[i];
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
        } else if (addrs[i].ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addrs[i];
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
        }
        PyObject *item = Py_BuildValue("(nnnOsI)", start + i * slot, n, size,
                                       (h->msg_flags & MSG_TRUNC) ? Py_True : Py_False, host,
                                       port);
        if (item == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, item);
    }
done:
    PyBuffer_Release(&b);
    return out;
}

/* --- to and from a stream: QEMU's framing, a 4-byte big-endian length before each frame --- */

#define STREAM_HLEN 4
#define ETH_HLEN_ 14

/* gather_for_stream(in_fd, buffer, budget, max_frame, room, header=0) -> (end, errno, rx,
 * rx_bytes, used, frames, dropped, back_at, back_len, back_header): up to `budget` frames
 * read from in_fd into buffer, each behind its length, for one send; a frame that would
 * take the gathered bytes over `room` (what the stream's queue can still take) is read and
 * dropped.  With a vnet header of `header` bytes in front of each frame read, the header is
 * read aside and left out; a frame whose header asks for work (segmentation, a checksum)
 * ends the batch (end 5) and is handed back: its header, and where its bytes are. */
static PyObject *
gather_for_stream(PyObject *self, PyObject *args)
{
    int in_fd, budget, header = 0;
    Py_buffer buf;
    Py_ssize_t max_frame, room;
    if (!PyArg_ParseTuple(args, "iw*inn|i", &in_fd, &buf, &budget, &max_frame, &room, &header))
        return NULL;
    if (header < 0 || header > MAX_HEADER) {
        PyBuffer_Release(&buf);
        return PyErr_Format(PyExc_ValueError, "a vnet header of %d bytes", header);
    }
    struct counts c = {0};
    long long frames = 0, dropped = 0;
    int end = END_BUDGET, err = 0;
    unsigned char *data = buf.buf, vnet[MAX_HEADER] = {0};
    size_t size = (size_t)buf.len, used = 0;
    Py_ssize_t back_at = 0, back_len = 0;
    if (max_frame < 0)
        max_frame = 0;
    for (int i = 0; i < budget; i++) {
        if (size - used < (size_t)max_frame + STREAM_HLEN)
            break; /* full: send this much first */
        struct iovec iov[2] = {
            {vnet, (size_t)header},
            {data + used + STREAM_HLEN, size - used - STREAM_HLEN},
        };
        ssize_t n;
        do {
            n = readv(in_fd, iov + (header ? 0 : 1), header ? 2 : 1);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) {
            if (n == 0)
                end = END_EOF;
            else if (errno == EAGAIN || errno == EWOULDBLOCK)
                end = END_WAIT;
            else {
                end = END_READ_ERROR;
                err = errno;
            }
            break;
        }
        c.rx++;
        c.rx_bytes += n;
        size_t length = (size_t)n > (size_t)header ? (size_t)n - (size_t)header : 0;
        if (header && ((size_t)n < (size_t)header + 14 || vnet[0] || vnet[1])) {
            end = END_HANDBACK; /* segmentation or a checksum to finish: the caller's */
            back_at = (Py_ssize_t)(used + STREAM_HLEN);
            back_len = (Py_ssize_t)length;
            break;
        }
        if (room < 0 || (size_t)room < used + STREAM_HLEN + length) {
            dropped++; /* the queue is full: dropped, as a NIC's full ring drops */
            continue;
        }
        unsigned char *h = data + used;
        h[0] = (unsigned char)(length >> 24);
        h[1] = (unsigned char)(length >> 16);
        h[2] = (unsigned char)(length >> 8);
        h[3] = (unsigned char)length;
        used += STREAM_HLEN + length;
        frames++;
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(iiLLnLLnny#)", end, err, c.rx, c.rx_bytes, (Py_ssize_t)used, frames,
                         dropped, back_at, back_len, (const char *)vnet,
                         (Py_ssize_t)(end == END_HANDBACK ? header : 0));
}

/* write_stream_frames(out_fd, buffer, start, end, limit) -> (end, errno, next, rx, rx_bytes,
 * tx, tx_bytes, dropped, link_down, errors, runts, too_long): every whole frame of
 * buffer[start:end] (each behind its length) written to out_fd, one write() each,
 * classified as relay_batch() classifies its writes; a frame under an Ethernet header is
 * skipped (runts); a length over `limit` stops it (too_long: that length); a FAILED
 * verdict ends it early (end 4; that frame is the caller's to count). */
static PyObject *
write_stream_frames(PyObject *self, PyObject *args)
{
    int out_fd;
    Py_buffer buf;
    Py_ssize_t start, stop, limit;
    if (!PyArg_ParseTuple(args, "iy*nnn", &out_fd, &buf, &start, &stop, &limit))
        return NULL;
    if (start < 0 || start > stop || stop > buf.len) {
        PyBuffer_Release(&buf);
        return PyErr_Format(PyExc_ValueError, "bad range %zd:%zd of a buffer of %zd", start,
                            stop, buf.len);
    }
    long long rx = 0, rx_bytes = 0, tx = 0, tx_bytes = 0, dropped = 0, link_down = 0;
    long long errors = 0, runts = 0;
    unsigned long too_long = 0;
    int end = END_BUDGET, err = 0;
    const unsigned char *d = buf.buf;
    Py_ssize_t at = start;
    while (stop - at >= STREAM_HLEN) {
        unsigned long length = ((unsigned long)d[at] << 24) | ((unsigned long)d[at + 1] << 16) |
                               ((unsigned long)d[at + 2] << 8) | (unsigned long)d[at + 3];
        if (limit < 0 || length > (unsigned long)limit) {
            too_long = length;
            break;
        }
        if ((unsigned long)(stop - at - STREAM_HLEN) < length)
            break; /* the rest of it is still on its way */
        const unsigned char *frame = d + at + STREAM_HLEN;
        at += STREAM_HLEN + (Py_ssize_t)length;
        if (length < ETH_HLEN_) {
            runts++;
            continue;
        }
        rx++;
        rx_bytes += (long long)length;
        if (out_fd < 0) {
            errors++;
            continue;
        }
        int verdict = write_classified(out_fd, frame, length);
        if (tally(verdict, (long long)length, &tx, &tx_bytes, &dropped, &link_down, &errors)) {
            end = END_WRITE_ERROR;
            err = errno;
            break;
        }
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(iinLLLLLLLLk)", end, err, at, rx, rx_bytes, tx, tx_bytes, dropped,
                         link_down, errors, runts, too_long);
}

static PyMethodDef methods[] = {
    {"gather_for_stream", gather_for_stream, METH_VARARGS,
     "gather_for_stream(in_fd, buffer, budget, max_frame, room, header=0) -> (end, errno, rx, "
     "rx_bytes, used, frames, dropped, back_at, back_len, back_header)\n\nUp to `budget` "
     "frames read from in_fd into buffer, each behind its 4-byte big-endian length (QEMU's "
     "stream framing), for one send; frames past `room` bytes are read and dropped; a vnet "
     "header of `header` bytes is left out, and a frame it asks work for handed back (end 5)."},
    {"write_stream_frames", write_stream_frames, METH_VARARGS,
     "write_stream_frames(out_fd, buffer, start, end, limit) -> (end, errno, next, rx, "
     "rx_bytes, tx, tx_bytes, dropped, link_down, errors, runts, too_long)\n\nThe whole "
     "frames of a stream read (each behind its length) written to out_fd, one write() "
     "each, classified by the verdict table."},
    {"relay_batch_to_udp", relay_batch_to_udp, METH_VARARGS,
     "relay_batch_to_udp(in_fd, out_fd, buffer, budget, max_frame, header, prefix, address) "
     "-> (end, errno, rx, rx_bytes, tx, tx_bytes, handback_offset, handback_length, "
     "failures)\n\nFrames read from in_fd sent as datagrams to one peer with sendmmsg(), "
     "each behind prefix, its vnet header left out; end 5 hands back a frame that needs "
     "work; failures: {errno: datagrams refused}."},
    {"write_frames", write_frames, METH_VARARGS,
     "write_frames(out_fd, frames, start) -> (end, errno, next, tx, tx_bytes, dropped, "
     "link_down, errors)\n\nWrite frames[start:] (a list) to out_fd, one write() each, "
     "classified by the verdict table; end 4 and `next` after the frame whose verdict was "
     "FAILED."},
    {"recv_datagrams", recv_datagrams, METH_VARARGS,
     "recv_datagrams(fd, buffer, start, slot, count) -> [(offset, n, size, truncated, host, "
     "port)]\n\nUp to `count` datagrams with one recvmmsg(MSG_DONTWAIT), the i-th into "
     "buffer[start + i*slot:][:slot]; size: what UDP GRO joined them at (n if not). "
     "BlockingIOError when there is none."},
    {"relay_batch_to_socket", relay_batch_to_socket, METH_VARARGS,
     "relay_batch_to_socket(in_fd, out_sock, buffer, budget, max_frame) -> as relay_batch\n\n"
     "relay_batch() for a destination socket that takes one frame per datagram (a bound "
     "packet socket): the frames read are sent with sendmmsg(), up to 64 a call."},
    {"relay_batch_to_ring", relay_batch_to_ring, METH_VARARGS,
     "relay_batch_to_ring(in_fd, ring_fd, big_fd, ring, frame_size, cursor, scratch, budget, "
     "header) -> as relay_batch\n\nrelay_batch() for a packet socket's TPACKET_V2 transmit "
     "ring (frames behind a vnet header of `header` bytes, 0 or 10): "
     "frames read into scratch, copied into its slots from cursor[0] on, sent with one "
     "send(); a frame larger than a slot sent alone from scratch on big_fd. cursor[0] ends "
     "at the next slot to fill."},
    {"ring_batch", ring_batch, METH_VARARGS,
     "ring_batch(ring, block_size, block_count, cursor, out_fd, budget, header) -> (end, "
     "errno, rx, rx_bytes, tx, tx_bytes, dropped, link_down, errors, truncated, runts, "
     "corrupt)\n\n"
     "Write up to `budget` frames of a TPACKET_V3 ring to out_fd, giving blocks back; "
     "`cursor` ([block, offset, left, taken]) is updated in place. `end`: 0 budget spent, "
     "1 no block ready, 4 write error."},
    {"relay_batch", relay_batch, METH_VARARGS,
     "relay_batch(in_fd, out_fd, buffer, budget) -> (end, errno, rx, rx_bytes, tx, "
     "tx_bytes, dropped, link_down, errors)\n\n"
     "Move up to `budget` frames from in_fd to out_fd through `buffer` without "
     "blocking. `end`: 0 budget spent, 1 source would block, 2 end of file, "
     "3 read error, 4 write error (`errno` says which)."},
    {"set_verdicts", set_verdicts, METH_O,
     "set_verdicts(table)\n\nThe errno-to-verdict table (bytes, one verdict per errno "
     "0..255) of greentap.core.verdicts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "greentap.green._relay",
    "The wire's inner loop in C (see greentap.green.relay).", -1, methods,
};

PyMODINIT_FUNC
PyInit__relay(void)
{
    for (int i = 0; i < TABLE_SIZE; i++)
        verdicts[i] = V_FAILED;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *names = PyTuple_New(V_COUNT);
    if (names == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (int i = 0; i < V_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(verdict_names[i]);
        if (name == NULL) {
            Py_DECREF(names);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(names, i, name);
    }
    if (PyModule_AddObject(m, "VERDICTS", names) < 0) {
        Py_DECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
