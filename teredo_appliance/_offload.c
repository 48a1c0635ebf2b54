/* TUN offloads for the relay and the client: the Internet checksum, TSO segmentation of a
 * super-packet read from the TUN, and coalescing of in-order TCP segments into one GSO write.
 *
 * A TUN opened with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO6) hands us TCP
 * super-packets of up to 64 KiB and takes them from us: one system call instead of ~45.
 * Cutting and gluing them touches every byte (checksums), which pure Python cannot afford,
 * so it is done here on buffers. The layout of the 10-byte header is include/uapi/linux/
 * virtio_net.h (struct virtio_net_hdr), in host byte order (a TUN's default). RFC 1071 for
 * the checksum, RFC 8200 §8.1 for the IPv6 pseudo-header, RFC 9293 §3.1 for TCP.
 *
 * Errors: malformed input raises ValueError with a short reason; the Python side counts it
 * as a drop. Nothing here performs I/O.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define VNET_HDR_LEN 10
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV6 4
#define VNET_GSO_ECN 0x80

#define IPV6_HDR 40
#define NH_TCP 6
#define TCP_MIN 20
#define TCP_CSUM_OFFSET 16
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
#define MAX_IPV6_PAYLOAD 65535
#define MAX_SEGMENTS 128  /* per super-packet: 64 KiB / the smallest sensible MSS is far less */
#define OPEN_FLOWS 16     /* flows coalesced at once in one batch */

static inline uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static inline uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put32(unsigned char *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static inline uint16_t get16h(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void put16h(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }

/* The 32-bit-wide ones' complement sum of big-endian 16-bit words, not folded. */
static uint64_t sum_be(const unsigned char *p, size_t n, uint64_t acc) {
    uint64_t native = 0;
    while (n >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        native += (uint64_t)a + b;
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        native += w;
        p += 2;
        n -= 2;
    }
    if (n) {
        unsigned char last[2] = {p[0], 0};
        uint16_t w;
        memcpy(&w, last, 2);
        native += w;
    }
    while (native >> 16) native = (native & 0xffff) + (native >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    native = ((native & 0xff) << 8) | (native >> 8);
#endif
    return acc + native;
}

static uint16_t fold(uint64_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

/* The IPv6 pseudo-header (RFC 8200 §8.1) of `packet` for an upper-layer length. */
static uint64_t pseudo_sum(const unsigned char *packet, uint32_t length, uint8_t next_header) {
    uint64_t sum = sum_be(packet + 8, 32, 0);
    return sum + (length >> 16) + (length & 0xffff) + next_header;
}

static int bad(const char *reason) {
    PyErr_SetString(PyExc_ValueError, reason);
    return -1;
}

/* -- checksum ------------------------------------------------------------------------- */

static PyObject *py_checksum(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int initial = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &initial)) return NULL;
    uint16_t sum = fold(sum_be(data.buf, (size_t)data.len, initial));
    PyBuffer_Release(&data);
    return PyLong_FromLong((uint16_t)~sum);
}

/* -- segmentation: TUN -> peers ------------------------------------------------------- */

/* A plain packet whose transport checksum the kernel left to us (NEEDS_CSUM). */
static PyObject *complete_checksum(const unsigned char *packet, Py_ssize_t len, uint16_t start, uint16_t offset) {
    if ((Py_ssize_t)start + offset + 2 > len) {
        bad("csum-out-of-range");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)packet, len);
    if (out == NULL) return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    /* The field holds the pseudo-header sum already: summing over it completes it. */
    uint16_t sum = fold(sum_be(p + start, (size_t)(len - start), 0));
    put16(p + start + offset, (uint16_t)~sum);
    return out;
}

/* A TSO super-packet (IPv6 + TCP without extension headers) cut at `mss` bytes of payload. */
static PyObject *split_tcp(const unsigned char *packet, Py_ssize_t len, uint16_t mss, int ecn) {
    if (len < IPV6_HDR + TCP_MIN) { bad("gso-short"); return NULL; }
    if (packet[0] >> 4 != 6) { bad("gso-not-ipv6"); return NULL; }
    if (packet[6] != NH_TCP) { bad("gso-not-tcp"); return NULL; }
    Py_ssize_t thl = (packet[IPV6_HDR + 12] >> 4) * 4;
    Py_ssize_t hlen = IPV6_HDR + thl;
    if (thl < TCP_MIN || hlen > len) { bad("gso-bad-tcp-header"); return NULL; }
    if (IPV6_HDR + (Py_ssize_t)get16(packet + 4) != len) { bad("gso-bad-length"); return NULL; }
    if (mss == 0) { bad("gso-zero-size"); return NULL; }
    Py_ssize_t payload = len - hlen;
    Py_ssize_t count = payload == 0 ? 1 : (payload + mss - 1) / mss;
    if (count > MAX_SEGMENTS) { bad("gso-too-many-segments"); return NULL; }
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    const unsigned char *tcp = packet + IPV6_HDR;
    uint32_t seq = get32(tcp + 4);
    unsigned char flags = tcp[13];
    uint64_t header_sum = sum_be(packet + 8, 32, 0) + NH_TCP;  /* pseudo-header minus length */
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t at = hlen + i * mss;
        Py_ssize_t size = payload - i * mss < mss ? payload - i * mss : mss;
        PyObject *segment = PyBytes_FromStringAndSize(NULL, hlen + size);
        if (segment == NULL) { Py_DECREF(list); return NULL; }
        unsigned char *s = (unsigned char *)PyBytes_AS_STRING(segment);
        memcpy(s, packet, (size_t)hlen);
        memcpy(s + hlen, packet + at, (size_t)size);
        uint32_t tcp_length = (uint32_t)(thl + size);
        put16(s + 4, (uint16_t)tcp_length);
        unsigned char *t = s + IPV6_HDR;
        put32(t + 4, seq + (uint32_t)(i * mss));
        unsigned char f = flags;
        if (i != count - 1) f &= (unsigned char)~(TCP_FIN | TCP_PSH);  /* only the last ends or pushes */
        if (i != 0 && ecn) f &= (unsigned char)~TCP_CWR;                /* CWR once (RFC 3168 §6.1.2) */
        t[13] = f;
        put16(t + TCP_CSUM_OFFSET, 0);
        uint64_t sum = header_sum + tcp_length;
        sum = sum_be(t, (size_t)tcp_length, sum);
        put16(t + TCP_CSUM_OFFSET, (uint16_t)~fold(sum));
        PyList_SET_ITEM(list, i, segment);
    }
    return list;
}

/* segment(frame) -> list of IPv6 packets: what the kernel meant by one read of the TUN. */
static PyObject *py_segment(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *frame = view.buf;
    Py_ssize_t len = view.len;
    PyObject *result = NULL;
    if (len < VNET_HDR_LEN) {
        bad("vnet-short");
        goto done;
    }
    unsigned char flags = frame[0], gso = frame[1];
    uint16_t gso_size = get16h(frame + 4), csum_start = get16h(frame + 6), csum_offset = get16h(frame + 8);
    const unsigned char *packet = frame + VNET_HDR_LEN;
    Py_ssize_t plen = len - VNET_HDR_LEN;
    if ((gso & ~VNET_GSO_ECN) == VNET_GSO_NONE) {
        PyObject *one = (flags & VNET_F_NEEDS_CSUM)
            ? complete_checksum(packet, plen, csum_start, csum_offset)
            : PyBytes_FromStringAndSize((const char *)packet, plen);
        if (one == NULL) goto done;
        result = PyList_New(1);
        if (result == NULL) { Py_DECREF(one); goto done; }
        PyList_SET_ITEM(result, 0, one);
    } else if ((gso & ~VNET_GSO_ECN) == VNET_GSO_TCPV6) {
        result = split_tcp(packet, plen, gso_size, gso & VNET_GSO_ECN);
    } else {
        bad("gso-unsupported");
    }
done:
    PyBuffer_Release(&view);
    return result;
}

/* -- coalescing: peers -> TUN --------------------------------------------------------- */

typedef struct {
    Py_buffer view;
    Py_ssize_t hlen; /* IPv6 + TCP header bytes, if mergeable */
    Py_ssize_t next; /* the next segment of its group, -1 at the end */
} Seg;

typedef struct {
    Py_ssize_t first; /* the segment whose headers the merged packet keeps */
    Py_ssize_t last;
    Py_ssize_t count;
    Py_ssize_t bytes; /* TCP payload bytes so far */
    Py_ssize_t mss;   /* the first segment's payload size: every other is <= it */
    int open;         /* may still grow */
} Group;

/* Whether `p` is a TCP segment (IPv6 without extension headers): its flow can be told. */
static int is_tcp(const unsigned char *p, Py_ssize_t len) {
    return len >= IPV6_HDR + TCP_MIN && p[0] >> 4 == 6 && p[6] == NH_TCP;
}

static int same_flow(const unsigned char *a, const unsigned char *b) {
    return memcmp(a + 8, b + 8, 32) == 0 && memcmp(a + IPV6_HDR, b + IPV6_HDR, 4) == 0;
}

/* Whether TCP segment `p` has data, only ACK (and PSH), and a valid checksum. */
static int mergeable(const unsigned char *p, Py_ssize_t len, Py_ssize_t *hlen) {
    if (IPV6_HDR + (Py_ssize_t)get16(p + 4) != len) return 0;
    Py_ssize_t thl = (p[IPV6_HDR + 12] >> 4) * 4;
    if (thl < TCP_MIN || IPV6_HDR + thl >= len) return 0; /* no payload: nothing to merge */
    if ((p[IPV6_HDR + 13] & ~TCP_PSH) != TCP_ACK) return 0;
    uint64_t sum = pseudo_sum(p, (uint32_t)(len - IPV6_HDR), NH_TCP);
    if (fold(sum_be(p + IPV6_HDR, (size_t)(len - IPV6_HDR), sum)) != 0xffff) return 0;
    *hlen = IPV6_HDR + thl;
    return 1;
}

/* Whether segment `b` continues group `g` (whose first segment is `a`, last `z`). */
static int continues(const Group *g, const Seg *a, const Seg *z, const Seg *b) {
    const unsigned char *pa = a->view.buf, *pb = b->view.buf, *pz = z->view.buf;
    Py_ssize_t hlen = a->hlen;
    if (b->hlen != hlen) return 0;
    /* Same traffic class, flow label and hop limit; same ack, flags but PSH, window, options. */
    if (memcmp(pa, pb, 4) != 0 || pa[7] != pb[7]) return 0;
    const unsigned char *ta = pa + IPV6_HDR, *tb = pb + IPV6_HDR;
    if (memcmp(ta + 8, tb + 8, 5) != 0 || memcmp(ta + 14, tb + 14, 2) != 0) return 0;
    if (memcmp(ta + 18, tb + 18, (size_t)(hlen - IPV6_HDR - 18)) != 0) return 0; /* urgent pointer, options */
    if (pz[IPV6_HDR + 13] & TCP_PSH) return 0;                                    /* a push ends the group */
    Py_ssize_t size = b->view.len - hlen;
    if (size > g->mss || g->bytes != g->count * g->mss) return 0;                 /* only the last may be shorter */
    if (get32(tb + 4) != get32(ta + 4) + (uint32_t)g->bytes) return 0;
    if (hlen - IPV6_HDR + g->bytes + size > MAX_IPV6_PAYLOAD || g->count >= MAX_SEGMENTS) return 0;
    return 1;
}

static PyObject *plain_frame(const Seg *s) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + s->view.len);
    if (out == NULL) return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    memset(p, 0, VNET_HDR_LEN);
    memcpy(p + VNET_HDR_LEN, s->view.buf, (size_t)s->view.len);
    return out;
}

/* One GSO_TCPV6 frame with a partial checksum: the kernel completes (or skips) it. */
static PyObject *merged_frame(const Group *g, const Seg *segs) {
    const Seg *a = &segs[g->first];
    Py_ssize_t hlen = a->hlen;
    PyObject *out = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + hlen + g->bytes);
    if (out == NULL) return NULL;
    unsigned char *v = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char *p = v + VNET_HDR_LEN;
    v[0] = VNET_F_NEEDS_CSUM;
    v[1] = VNET_GSO_TCPV6;
    put16h(v + 2, (uint16_t)hlen);
    put16h(v + 4, (uint16_t)g->mss);
    put16h(v + 6, IPV6_HDR);
    put16h(v + 8, TCP_CSUM_OFFSET);
    memcpy(p, a->view.buf, (size_t)hlen);
    unsigned char *at = p + hlen;
    for (Py_ssize_t i = g->first; i >= 0; i = segs[i].next) {
        Py_ssize_t size = segs[i].view.len - hlen;
        memcpy(at, (const unsigned char *)segs[i].view.buf + hlen, (size_t)size);
        at += size;
    }
    uint32_t tcp_length = (uint32_t)(hlen - IPV6_HDR + g->bytes);
    put16(p + 4, (uint16_t)tcp_length);
    p[IPV6_HDR + 13] |= ((const unsigned char *)segs[g->last].view.buf)[IPV6_HDR + 13] & TCP_PSH;
    put16(p + IPV6_HDR + TCP_CSUM_OFFSET, fold(pseudo_sum(p, tcp_length, NH_TCP)));
    return out;
}

/* coalesce(packets) -> list of TUN frames (virtio header + packet): each flow's in-order
 * segments merged into GSO frames; anything else (a bad checksum included) alone. */
static PyObject *py_coalesce(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "coalesce() takes a sequence of packets");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), taken = 0, ngroups = 0;
    PyObject *result = NULL;
    Seg *segs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Seg));
    Group *groups = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Group));
    if (segs == NULL || groups == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (; taken < n; taken++) {
        Seg *b = &segs[taken];
        if (PyObject_GetBuffer(items[taken], &b->view, PyBUF_SIMPLE) < 0) goto done;
        b->next = -1;
        const unsigned char *pb = b->view.buf;
        int tcp = is_tcp(pb, b->view.len);
        int merge = tcp && mergeable(pb, b->view.len, &b->hlen);
        Group *g = NULL;
        if (tcp) { /* this flow's open group, if any among the latest few */
            for (Py_ssize_t k = ngroups - 1, seen = 0; k >= 0 && seen < OPEN_FLOWS; k--) {
                if (!groups[k].open) continue;
                seen++;
                if (same_flow(segs[groups[k].first].view.buf, pb)) {
                    g = &groups[k];
                    break;
                }
            }
        }
        if (g != NULL && merge && continues(g, &segs[g->first], &segs[g->last], b)) {
            segs[g->last].next = taken;
            g->last = taken;
            g->count++;
            g->bytes += b->view.len - b->hlen;
            continue;
        }
        if (g != NULL) g->open = 0; /* out of order or not mergeable: later ones must not pass it */
        Group *fresh = &groups[ngroups++];
        fresh->first = fresh->last = taken;
        fresh->count = 1;
        fresh->open = merge;
        fresh->bytes = fresh->mss = merge ? b->view.len - b->hlen : 0;
    }
    result = PyList_New(ngroups);
    if (result == NULL) goto done;
    for (Py_ssize_t k = 0; k < ngroups; k++) {
        Group *g = &groups[k];
        PyObject *frame = g->count > 1 ? merged_frame(g, segs) : plain_frame(&segs[g->first]);
        if (frame == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, k, frame);
    }
done:
    if (segs != NULL)
        for (Py_ssize_t i = 0; i < taken; i++) PyBuffer_Release(&segs[i].view);
    PyMem_Free(segs);
    PyMem_Free(groups);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"checksum", py_checksum, METH_VARARGS,
     "checksum(data, initial=0) -> the RFC 1071 checksum of data, a 16-bit partial sum added."},
    {"segment", py_segment, METH_O,
     "segment(frame) -> the IPv6 packets of one TUN read (virtio_net_hdr + packet); ValueError(reason) if malformed."},
    {"coalesce", py_coalesce, METH_O,
     "coalesce(packets) -> TUN frames: consecutive TCP segments of a flow merged into GSO frames."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_offload", "TUN offloads: checksum, TSO segmentation, GSO coalescing.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__offload(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "VNET_HDR_LEN", VNET_HDR_LEN) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SEGMENTS", MAX_SEGMENTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
