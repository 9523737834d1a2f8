/*
 * greentap.core._offload: the per-byte work of software offloads, in C.
 *
 * Pure computation on buffers, no system calls: the C twins of
 *   checksum(data)            greentap.core.checksum.ones_complement_sum
 *   segment(frame, prefix)    greentap.core.segment.segment, its segments joined,
 *                             each behind `prefix` (a VXLAN header, or nothing)
 *   coalesce(frames)          greentap.core.coalesce.coalesce
 *   merge_datagrams(...)      greentap.core.coalesce.python_merge_datagrams: the
 *                             datagrams of a batch of reads checked (VXLAN header
 *                             or runt), opened and merged
 * The Python modules are the reference: every check here is one there, in
 * the same order, so both accept and refuse the same input (the twin tests
 * in tests/unit/test_offload_twins.py compare them on random and damaged
 * frames, also under AddressSanitizer and UBSan).  What reaches segment()
 * comes from a local TAP; what reaches coalesce() comes from the network:
 * every offset is checked against the frame before it is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define VNET_SIZE 10
#define ETH_HLEN 14
#define VLAN_HLEN 4
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80
#define F_NEEDS_CSUM 1
#define TCP_ACK 0x10
#define TCP_PSH 0x08
#define TCP_FIN 0x01
#define TCP_CWR 0x80
#define MAX_SEGMENTS (1 << 16)
#define MAX_IP_LENGTH 0xFFFF

static inline unsigned
be16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static inline uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void
put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void
put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/*
 * sum + the ones' complement sum of p[0..n) as big-endian 16-bit words (an odd
 * last byte padded), folded to 16 bits: 0 only when every byte was 0.
 *
 * Summed as native 32-bit words, 32 bytes a step (the compiler vectorizes it):
 * the ones' complement sum does not depend on byte order, only its result is
 * swapped (RFC 1071, section 2(B)), and 2**16 is 1 modulo 0xFFFF, so 32-bit
 * words fold to the same sum as their 16-bit halves.
 */
static uint64_t
add_words(uint64_t sum, const unsigned char *p, Py_ssize_t n)
{
    uint64_t acc = 0;
    Py_ssize_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint32_t w[8];
        memcpy(w, p + i, sizeof w);
        acc += (uint64_t)w[0] + w[1] + w[2] + w[3] + w[4] + w[5] + w[6] + w[7];
    }
    for (; i + 4 <= n; i += 4) {
        uint32_t w;
        memcpy(&w, p + i, 4);
        acc += w;
    }
    if (i + 2 <= n) {
        uint16_t h;
        memcpy(&h, p + i, 2);
        acc += h;
        i += 2;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (i < n)
        acc += p[i];  /* the padded word's first byte: its low one in memory order */
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
    acc = ((acc & 0xFF) << 8) | (acc >> 8);
#else
    if (i < n)
        acc += (uint64_t)p[i] << 8;
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
#endif
    return sum + acc;
}

/* Folded: 0 only when every word was 0, 0xFFFF for any other multiple of 0xFFFF. */
static unsigned
fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (unsigned)sum;
}

static PyObject *
checksum(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned sum = fold(add_words(0, b.buf, b.len));
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(sum);
}

/* Where an Ethernet frame's payload starts past any 802.1Q/802.1ad tags, its
 * ethertype in *ethertype (greentap.core.ethernet.payload_offset); -1 when the
 * frame ends inside its header or tags. */
static Py_ssize_t
payload_offset(const unsigned char *frame, Py_ssize_t len, unsigned *ethertype)
{
    for (Py_ssize_t at = ETH_HLEN - 2; at + 2 <= len; at += VLAN_HLEN) {
        *ethertype = be16(frame + at);
        if (*ethertype != 0x8100 && *ethertype != 0x88A8)
            return at + 2;
    }
    return -1;
}

/* ---- segment ------------------------------------------------------------ */

static PyObject *SegmentError;  /* greentap.core.segment.SegmentError, set at import */

static PyObject *
refuse(const char *message)
{
    PyErr_SetString(SegmentError ? SegmentError : PyExc_ValueError, message);
    return NULL;
}

static PyObject *
segment_frames(const unsigned char *f, Py_ssize_t len, const unsigned char *prefix,
               Py_ssize_t plen, Py_ssize_t *each)
{
    if (len < VNET_SIZE + ETH_HLEN)
        return refuse("a super-frame is a runt");
    unsigned gso_type, gso_size, csum_start;
    uint16_t u16;
    gso_type = f[1];
    memcpy(&u16, f + 4, 2);
    gso_size = u16;
    memcpy(&u16, f + 6, 2);
    csum_start = u16;
    unsigned kind = gso_type & ~GSO_ECN & 0xFF;
    const unsigned char *data = f + VNET_SIZE;
    Py_ssize_t dlen = len - VNET_SIZE;
    if (kind != GSO_TCPV4 && kind != GSO_TCPV6 && kind != GSO_UDP_L4)
        return refuse("this gso type cannot be segmented here");
    if (gso_size == 0)
        return refuse("gso_size 0");
    unsigned ethertype;
    Py_ssize_t ip_at = payload_offset(data, dlen, &ethertype);
    if (ip_at < 0)
        return refuse("the frame ends inside its Ethernet header");
    int v4 = ethertype == 0x0800;
    if (!v4 && ethertype != 0x86DD)
        return refuse("the ethertype is not IP");
    if ((kind == GSO_TCPV4 && !v4) || (kind == GSO_TCPV6 && v4))
        return refuse("the gso type and the IP version disagree");
    Py_ssize_t l4_at = csum_start;
    Py_ssize_t minimum = v4 ? 20 : 40;
    if (l4_at < ip_at + minimum || l4_at + 8 > dlen)
        return refuse("csum_start is not a transport header in this frame");
    if (v4 && (data[ip_at] >> 4 != 4 || (data[ip_at] & 0xF) * 4 != l4_at - ip_at))
        return refuse("the IPv4 header's length does not reach csum_start");
    if (!v4 && data[ip_at] >> 4 != 6)
        return refuse("not an IPv6 header");
    unsigned proto = v4 ? data[ip_at + 9] : data[ip_at + 6];
    int tcp = kind != GSO_UDP_L4;
    Py_ssize_t l4_len;
    if (tcp) {
        l4_len = l4_at + 20 <= dlen ? (data[l4_at + 12] >> 4) * 4 : 0;
        if (proto != 6 || l4_len < 20 || l4_at + l4_len > dlen)
            return refuse("not a whole TCP header at csum_start");
    } else {
        l4_len = 8;
        if (proto != 17)
            return refuse("not a UDP header at csum_start");
    }
    Py_ssize_t headers = l4_at + l4_len;
    Py_ssize_t payload = dlen - headers;
    Py_ssize_t count = (payload + gso_size - 1) / gso_size;
    if (count > MAX_SEGMENTS)
        return refuse("too many segments");
    if (count <= 1)
        count = 1;
    Py_ssize_t longest = l4_len + (payload < (Py_ssize_t)gso_size ? payload : gso_size);
    if ((v4 ? l4_at - ip_at : l4_at - ip_at - 40) + longest > 0xFFFF)
        return refuse("a segment longer than IP allows");
    Py_ssize_t total = count * (plen + headers) + payload;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    *each = plen + headers + (payload < (Py_ssize_t)gso_size ? payload : gso_size);
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    uint32_t seq = tcp ? be32(data + l4_at + 4) : 0;
    unsigned ident = v4 ? be16(data + ip_at + 4) : 0;
    unsigned flags = tcp ? data[l4_at + 13] : 0;
    /* The pseudo-header's addresses; its length and protocol vary per segment. */
    uint64_t addresses = v4 ? add_words(0, data + ip_at + 12, 8) : add_words(0, data + ip_at + 8, 32);
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t from = i * (Py_ssize_t)gso_size;
        Py_ssize_t chunk = payload - from < (Py_ssize_t)gso_size ? payload - from : gso_size;
        if (chunk < 0)
            chunk = 0;
        memcpy(o + pos, prefix, plen);
        unsigned char *seg = o + pos + plen;
        memcpy(seg, data, headers);
        memcpy(seg + headers, data + headers + from, chunk);
        unsigned l4_total = (unsigned)(l4_len + chunk);
        if (v4) {
            put16(seg + ip_at + 2, (unsigned)(l4_at - ip_at) + l4_total);
            put16(seg + ip_at + 4, (ident + (unsigned)i) & 0xFFFF);
            put16(seg + ip_at + 10, 0);
            put16(seg + ip_at + 10, ~fold(add_words(0, seg + ip_at, l4_at - ip_at)) & 0xFFFF);
        } else {
            put16(seg + ip_at + 4, (unsigned)(l4_at - ip_at - 40) + l4_total);
        }
        Py_ssize_t sum_at;
        if (tcp) {
            put32(seg + l4_at + 4, seq + (uint32_t)from);
            unsigned mask = 0xFF;
            if (i + 1 < count)
                mask &= ~(TCP_FIN | TCP_PSH);
            if (i > 0)
                mask &= ~TCP_CWR;
            seg[l4_at + 13] = (unsigned char)(flags & mask);
            sum_at = l4_at + 16;
        } else {
            put16(seg + l4_at + 4, l4_total);
            sum_at = l4_at + 6;
        }
        put16(seg + sum_at, 0);
        /* v4: 0, proto, length (16 bits); v6: length (32 bits), 0, 0, 0, proto. */
        uint64_t sum = addresses + proto + l4_total;
        sum = add_words(sum, seg + l4_at, l4_len + chunk);
        unsigned l4_sum = ~fold(sum) & 0xFFFF;
        put16(seg + sum_at, l4_sum ? l4_sum : (tcp ? 0 : 0xFFFF));
        pos += plen + headers + chunk;
    }
    return out;
}

static PyObject *
segment(PyObject *self, PyObject *args)
{
    Py_buffer frame, prefix;
    int lengths = 0;
    if (!PyArg_ParseTuple(args, "y*y*|p", &frame, &prefix, &lengths))
        return NULL;
    if (lengths && prefix.len != 4) {
        PyBuffer_Release(&frame);
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_ValueError, "lengths: the prefix must be 4 bytes");
        return NULL;
    }
    Py_ssize_t each = 0;
    PyObject *out = segment_frames(frame.buf, frame.len, prefix.buf, prefix.len, &each);
    PyBuffer_Release(&frame);
    PyBuffer_Release(&prefix);
    if (out == NULL)
        return NULL;
    if (lengths && each > 4) {
        /* QEMU's stream framing: each segment behind its 4-byte big-endian length.
         * The bytes object is new and not shared yet: it may be filled in place. */
        unsigned char *d = (unsigned char *)PyBytes_AS_STRING(out);
        Py_ssize_t total = PyBytes_GET_SIZE(out);
        for (Py_ssize_t at = 0; at < total; at += each) {
            Py_ssize_t n = (total - at < each ? total - at : each) - 4;
            d[at] = (unsigned char)(n >> 24);
            d[at + 1] = (unsigned char)(n >> 16);
            d[at + 2] = (unsigned char)(n >> 8);
            d[at + 3] = (unsigned char)n;
        }
    }
    return Py_BuildValue("(Nn)", out, each);
}

/* ---- coalesce ----------------------------------------------------------- */

typedef struct {
    const unsigned char *p;  /* the frame */
    Py_ssize_t len;
    int tcp;                 /* parsed as TCP/IP (else handed on as it came) */
    int candidate;
    int v4;
    Py_ssize_t ip_at, l4_at, l4_len, headers, payload, flow_l2;
    uint32_t seq;
    unsigned flags;
} Seg;

typedef struct {
    Py_ssize_t first;        /* index of the frame it began with */
    Py_ssize_t size;         /* gso_size */
    Py_ssize_t length;       /* bytes so far */
    uint32_t next_seq;
    int open;
    int push;
    Py_ssize_t count;
    int made;                /* an output: a held super-frame (of one frame or more) */
} Held;

static void
parse(Seg *s)
{
    const unsigned char *f = s->p;
    Py_ssize_t end = s->len;
    unsigned ethertype;
    s->tcp = s->candidate = 0;
    Py_ssize_t ip_at = payload_offset(f, end, &ethertype), l4_at, ip_end;
    if (ip_at < 0)
        return;
    int fits;
    if (ethertype == 0x0800) {
        if (ip_at + 20 > end || f[ip_at] != 0x45 || f[ip_at + 9] != 6)
            return;
        l4_at = ip_at + 20;
        ip_end = ip_at + be16(f + ip_at + 2);
        fits = (be16(f + ip_at + 6) & 0x3FFF) == 0;
        s->v4 = 1;
    } else if (ethertype == 0x86DD) {
        if (ip_at + 40 > end || f[ip_at] >> 4 != 6 || f[ip_at + 6] != 6)
            return;
        l4_at = ip_at + 40;
        ip_end = l4_at + be16(f + ip_at + 4);
        fits = 1;
        s->v4 = 0;
    } else {
        return;
    }
    if (l4_at + 20 > end)
        return;
    s->tcp = 1;
    s->ip_at = ip_at;
    s->l4_at = l4_at;
    s->l4_len = (f[l4_at + 12] >> 4) * 4;
    s->flags = f[l4_at + 13];
    s->headers = l4_at + s->l4_len;
    s->payload = ip_end - s->headers;
    s->flow_l2 = ip_at;
    s->seq = be32(f + l4_at + 4);
    s->candidate = fits && s->l4_len >= 20 && ip_end == end && s->payload > 0 &&
                   (s->flags & ~TCP_PSH & 0xFF) == TCP_ACK;
    if (!s->candidate)
        return;
    /* Both checksums must verify: merging would give a damaged segment a valid one. */
    uint64_t sum;
    Py_ssize_t tcp_length = end - l4_at;
    if (s->v4) {
        if (fold(add_words(0, f + ip_at, 20)) != 0xFFFF) {
            s->candidate = 0;
            return;
        }
        sum = add_words(0, f + ip_at + 12, 8) + 6 + (uint64_t)tcp_length;
    } else {
        sum = add_words(0, f + ip_at + 8, 32) + (uint64_t)tcp_length + 6;
    }
    /* A v4 TCP length over 16 bits is impossible here (ip_end == end). */
    if (fold(add_words(sum, f + l4_at, tcp_length)) != 0xFFFF)
        s->candidate = 0;
}

/* Same flow: Ethernet header and tags, addresses, ports. */
static int
same_flow(const Seg *a, const Seg *b)
{
    if (a->v4 != b->v4 || a->flow_l2 != b->flow_l2)
        return 0;
    if (memcmp(a->p, b->p, a->flow_l2) != 0)
        return 0;
    Py_ssize_t addr = a->v4 ? 12 : 8, alen = a->v4 ? 8 : 32;
    if (memcmp(a->p + a->ip_at + addr, b->p + b->ip_at + addr, alen) != 0)
        return 0;
    return memcmp(a->p + a->l4_at, b->p + b->l4_at, 4) == 0;
}

/* Same ACK, data offset, flags but PSH, window, options; same IP fields. */
static int
same_match(const Seg *a, const Seg *b)
{
    const unsigned char *x = a->p + a->l4_at, *y = b->p + b->l4_at;
    if (memcmp(x + 8, y + 8, 5) != 0 || ((x[13] ^ y[13]) & ~TCP_PSH & 0xFF) ||
        memcmp(x + 14, y + 14, 2) != 0)
        return 0;
    if (a->headers - a->l4_at != b->headers - b->l4_at ||
        memcmp(x + 20, y + 20, a->headers - a->l4_at - 20) != 0)
        return 0;
    const unsigned char *i = a->p + a->ip_at, *j = b->p + b->ip_at;
    if (a->v4)
        return i[1] == j[1] && i[8] == j[8] && (i[6] >> 6) == (j[6] >> 6);
    return memcmp(i, j, 4) == 0 && i[7] == j[7];
}

static PyObject *
build(const Seg *segs, const Held *h, const Py_ssize_t *owner, Py_ssize_t nsegs)
{
    const Seg *s = &segs[h->first];
    PyObject *out = PyByteArray_FromStringAndSize(NULL, VNET_SIZE + h->length);
    if (out == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyByteArray_AS_STRING(out);
    unsigned char *frame = o + VNET_SIZE;
    memcpy(frame, s->p, s->len);
    if (h->count == 1) {
        memset(o, 0, VNET_SIZE);
        return out;
    }
    Py_ssize_t pos = s->len;
    for (Py_ssize_t k = h->first + 1; k < nsegs; k++) {
        if (owner[k] != h->first)
            continue;
        memcpy(frame + pos, segs[k].p + segs[k].headers, segs[k].payload);
        pos += segs[k].payload;
    }
    Py_ssize_t ip_at = s->ip_at, l4_at = s->l4_at, tcp_length = h->length - l4_at;
    if (h->push)
        frame[l4_at + 13] |= TCP_PSH;
    uint64_t pseudo;
    if (s->v4) {
        put16(frame + ip_at + 2, (unsigned)(h->length - ip_at));
        put16(frame + ip_at + 10, 0);
        put16(frame + ip_at + 10, ~fold(add_words(0, frame + ip_at, 20)) & 0xFFFF);
        pseudo = add_words(0, frame + ip_at + 12, 8) + 6 + (uint64_t)tcp_length;
    } else {
        put16(frame + ip_at + 4, (unsigned)tcp_length);
        pseudo = add_words(0, frame + ip_at + 8, 32) + (uint64_t)tcp_length + 6;
    }
    put16(frame + l4_at + 16, fold(pseudo));  /* CHECKSUM_PARTIAL: the pseudo-header's sum */
    uint16_t vnet[4] = {(uint16_t)(l4_at + s->l4_len), (uint16_t)h->size, (uint16_t)l4_at, 16};
    o[0] = F_NEEDS_CSUM;
    o[1] = s->v4 ? GSO_TCPV4 : GSO_TCPV6;
    memcpy(o + 2, vnet, sizeof vnet);
    return out;
}

/* Merge segs[0..n) (p and len set): the list of frames behind vnet headers. */
static PyObject *
coalesce_segs(Seg *segs, Py_ssize_t n)
{
    PyObject *result = NULL;
    Held *held = PyMem_Calloc(n ? n : 1, sizeof(Held));  /* indexed by first frame */
    Py_ssize_t *owner = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));
    Py_ssize_t *live = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t));  /* held frames' firsts */
    Py_ssize_t nlive = 0, outputs = 0;
    if (!held || !owner || !live) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        Seg *s = &segs[k];
        parse(s);
        owner[k] = -1;  /* an output of its own */
        if (!s->tcp) {
            outputs++;
            continue;
        }
        Py_ssize_t found = -1;
        for (Py_ssize_t j = 0; j < nlive; j++) {
            if (same_flow(&segs[live[j]], s)) {
                found = j;
                break;
            }
        }
        if (found >= 0) {
            Held *h = &held[live[found]];
            if (s->candidate && h->open && s->seq == h->next_seq &&
                same_match(&segs[h->first], s) && s->payload <= h->size &&
                h->length - segs[h->first].ip_at + s->payload <= MAX_IP_LENGTH) {
                owner[k] = h->first;
                h->length += s->payload;
                h->next_seq += (uint32_t)s->payload;
                h->count++;
                int push = (s->flags & TCP_PSH) != 0;
                h->push |= push;
                if (push || s->payload < h->size)
                    h->open = 0;
                continue;
            }
            live[found] = live[--nlive];  /* it ends here */
        }
        outputs++;
        if (s->candidate) {
            Held *h = &held[k];
            h->first = k;
            h->size = s->payload;
            h->length = s->len;
            h->next_seq = s->seq + (uint32_t)s->payload;
            h->push = 0;
            h->open = !(s->flags & TCP_PSH);
            h->count = 1;
            h->made = 1;
            live[nlive++] = k;
        }
    }
    result = PyList_New(outputs);
    if (result == NULL)
        goto done;
    Py_ssize_t i = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (owner[k] != -1)
            continue;
        PyObject *item;
        if (held[k].made) {
            item = build(segs, &held[k], owner, n);
        } else {
            item = PyByteArray_FromStringAndSize(NULL, VNET_SIZE + segs[k].len);
            if (item != NULL) {
                memset(PyByteArray_AS_STRING(item), 0, VNET_SIZE);
                memcpy(PyByteArray_AS_STRING(item) + VNET_SIZE, segs[k].p, segs[k].len);
            }
        }
        if (item == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i++, item);
    }
done:
    PyMem_Free(held);
    PyMem_Free(owner);
    PyMem_Free(live);
    return result;
}

static PyObject *
coalesce(PyObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "coalesce() takes a sequence of frames");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), got = 0;
    PyObject *result = NULL;
    Py_buffer *views = PyMem_Calloc(n ? n : 1, sizeof(Py_buffer));
    Seg *segs = PyMem_Calloc(n ? n : 1, sizeof(Seg));
    if (!views || !segs) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &views[got], PyBUF_SIMPLE) < 0)
            goto done;
        segs[got].p = views[got].buf;
        segs[got].len = views[got].len;
    }
    result = coalesce_segs(segs, n);
done:
    for (Py_ssize_t k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_Free(segs);
    Py_DECREF(seq);
    return result;
}

/* ---- datagrams ----------------------------------------------------------- */

#define VXLAN_HLEN 8
#define VXLAN_FLAG_I 0x08

/*
 * merge_datagrams(buffer, spans, vni) -> (frames, rx, rx_bytes, short, no_i_flag, wrong_vni)
 *
 * spans: (offset, length, size) per read into buffer, each `length` bytes of
 * datagrams of `size` bytes but the last (UDP GRO).  vni >= 0: VXLAN, each
 * datagram's header checked (greentap.core.vxlan.decode); vni < 0: raw UDP,
 * a datagram under an Ethernet header is a runt (counted as `short`).
 */
static PyObject *
merge_datagrams(PyObject *self, PyObject *args)
{
    Py_buffer b;
    PyObject *spans_arg;
    long vni;
    if (!PyArg_ParseTuple(args, "y*Ol", &b, &spans_arg, &vni))
        return NULL;
    PyObject *spans = NULL, *frames = NULL, *out = NULL;
    Seg *segs = NULL;
    Py_ssize_t nsegs = 0, cap = 0, rx_bytes = 0, shorts = 0, no_i = 0, wrong = 0;
    spans = PySequence_Fast(spans_arg, "spans: a sequence of (offset, length, size)");
    if (spans == NULL)
        goto done;
    Py_ssize_t nspans = PySequence_Fast_GET_SIZE(spans);
    for (Py_ssize_t i = 0; i < nspans; i++) {
        Py_ssize_t off, len, size;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(spans, i), "nnn", &off, &len, &size))
            goto done;
        if (off < 0 || len < 0 || off > b.len || len > b.len - off) {
            PyErr_SetString(PyExc_ValueError, "a span outside the buffer");
            goto done;
        }
        if (size <= 0)
            size = len > 0 ? len : 1;
        Py_ssize_t count = len > 0 ? (len + size - 1) / size : 1;  /* an empty one is one too */
        if (nsegs + count > cap) {
            Py_ssize_t want = (nsegs + count) * 2;
            Seg *grown = PyMem_Realloc(segs, want * sizeof(Seg));
            if (grown == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            segs = grown;
            cap = want;
        }
        for (Py_ssize_t at = 0; at < count; at++) {
            const unsigned char *d = (const unsigned char *)b.buf + off + at * size;
            Py_ssize_t dlen = len - at * size < size ? len - at * size : size;
            if (vni >= 0) {
                if (dlen < VXLAN_HLEN + ETH_HLEN) {
                    shorts++;
                    continue;
                }
                if (!(d[0] & VXLAN_FLAG_I)) {
                    no_i++;
                    continue;
                }
                if ((long)(be32(d + 4) >> 8) != vni) {
                    wrong++;
                    continue;
                }
                d += VXLAN_HLEN;
                dlen -= VXLAN_HLEN;
            } else if (dlen < ETH_HLEN) {
                shorts++;
                continue;
            }
            memset(&segs[nsegs], 0, sizeof(Seg));
            segs[nsegs].p = d;
            segs[nsegs].len = dlen;
            rx_bytes += dlen;
            nsegs++;
        }
    }
    frames = coalesce_segs(segs, nsegs);
    if (frames == NULL)
        goto done;
    out = Py_BuildValue("(Nnnnnn)", frames, nsegs, rx_bytes, shorts, no_i, wrong);
done:
    Py_XDECREF(spans);
    PyMem_Free(segs);
    PyBuffer_Release(&b);
    return out;
}

/* ---- stream framing ------------------------------------------------------ */

/*
 * split_frames(buffer, start, end, limit) -> (frames, end, runts, too_long)
 *
 * greentap.core.streamframe.python_split_frames: the whole frames of
 * buffer[start:end], each behind its 4-byte big-endian length, as a flat list
 * [offset, length, ...]; where the first byte not used is; frames shorter than
 * an Ethernet header skipped and counted; a length over `limit` stops it.
 */
static PyObject *
split_frames(PyObject *self, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t start, end, limit = 4096 + 65536;  /* streamframe.MAX_FRAME */
    if (!PyArg_ParseTuple(args, "y*nn|n", &b, &start, &end, &limit))
        return NULL;
    PyObject *frames = NULL, *out = NULL;
    if (start < 0 || start > end || end > b.len) {
        PyErr_Format(PyExc_ValueError, "bad range %zd:%zd of a buffer of %zd", start, end, b.len);
        goto done;
    }
    frames = PyList_New(0);
    if (frames == NULL)
        goto done;
    const unsigned char *d = b.buf;
    Py_ssize_t at = start, runts = 0;
    unsigned long too_long = 0;
    while (end - at >= 4) {
        unsigned long length = be32(d + at);
        if (limit < 0 || length > (unsigned long)limit) {
            too_long = length;
            break;
        }
        if ((unsigned long)(end - at - 4) < length)
            break;
        if (length < ETH_HLEN) {
            runts++;
        } else {
            PyObject *o = PyLong_FromSsize_t(at + 4);
            if (o == NULL || PyList_Append(frames, o) < 0) {
                Py_XDECREF(o);
                goto done;
            }
            Py_DECREF(o);
            o = PyLong_FromUnsignedLong(length);
            if (o == NULL || PyList_Append(frames, o) < 0) {
                Py_XDECREF(o);
                goto done;
            }
            Py_DECREF(o);
        }
        at += 4 + (Py_ssize_t)length;
    }
    out = Py_BuildValue("(Onnk)", frames, at, runts, too_long);
done:
    Py_XDECREF(frames);
    PyBuffer_Release(&b);
    return out;
}

static PyObject *
set_segment_error(PyObject *self, PyObject *arg)
{
    Py_XINCREF(arg);
    Py_XSETREF(SegmentError, arg);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"checksum", checksum, METH_O,
     "checksum(data) -> int\n\nThe 16-bit ones' complement sum of data (RFC 1071), folded, "
     "not inverted: greentap.core.checksum.ones_complement_sum."},
    {"segment", segment, METH_VARARGS,
     "segment(frame, prefix, lengths=False) -> (bytes, each)\n\nThe segments of a super-frame "
     "(a vnet header first) as greentap.core.segment.segment cuts them, each behind prefix, "
     "joined; each: the length of the first (prefix included), which every other one has but "
     "the last. lengths: the 4-byte prefix is each segment's length, big-endian."},
    {"coalesce", coalesce, METH_O,
     "coalesce(frames) -> list[bytearray]\n\ngreentap.core.coalesce.coalesce: TCP segments "
     "of one flow merged into super-frames, every frame behind a vnet header."},
    {"merge_datagrams", merge_datagrams, METH_VARARGS,
     "merge_datagrams(buffer, spans, vni) -> (frames, rx, rx_bytes, short, no_i_flag, "
     "wrong_vni)\n\ngreentap.core.coalesce.merge_datagrams: the datagrams read into buffer "
     "(spans of (offset, length, size)) checked, opened and merged."},
    {"split_frames", split_frames, METH_VARARGS,
     "split_frames(buffer, start, end, limit=MAX_FRAME) -> (frames, end, runts, too_long)\n\n"
     "greentap.core.streamframe.python_split_frames: the frames of a stream read."},
    {"set_segment_error", set_segment_error, METH_O,
     "set_segment_error(cls)\n\nThe exception segment() raises for a frame it refuses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "greentap.core._offload",
    "Software offloads' per-byte work in C (see greentap.core.segment, .coalesce).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__offload(void)
{
    return PyModule_Create(&module);
}
