/*
 * The Teredo server's qualification fast path in C (RFC 4380 §5.3.2), an optional twin of
 * roles/server_machine.py's canonical-RS branch.
 *
 * Why: a server spends nearly all its time answering one datagram, the qualification RS,
 * always with the same RA packet. With recvmmsg/sendmmsg the system calls are already
 * amortised; what is left per datagram in Python (a bytes object, a tuple, a verdict, a
 * send slot filled from Python) costs more than miredo-server's whole kernel round trip.
 * Here a batch is read, judged and answered without a Python object per datagram.
 *
 * Only the case the Python machine also takes by comparing bytes is handled: an
 * authenticated RS (auth indicator without client id or auth value) whose IPv6 packet is
 * one of the two canonical RSs, from a global IPv4 source and not from ourselves or port 0.
 * Every other datagram goes back to Python unchanged (the `slow` list), where
 * ServerMachine.handle() judges it by the full rules and counts its drop. So the C code
 * decides nothing the Python code does not decide the same way; tests/test_rsfast.py
 * checks that with hypothesis against the plain machine.
 *
 * Types:
 *   RateTable(rate, burst, capacity)  ratelimit.KeyedRateLimit's algorithm for int keys
 *       (a GCRA "theoretical arrival time" per key, two generations of at most capacity/2
 *       keys each), shared by the fast and the plain path of one server.
 *   FastPath(own, port, rs, ra, limiter, non_global, reachable)  the decisions (judge()).
 *   Pump(fast_path, fd, which, reply_fds)  the I/O for one server socket: receive() reads
 *       one batch, answers what the fast path answers with sendmmsg on the right socket
 *       and returns the rest as [(payload, (host, port)), ...].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define BATCH 64              /* datagrams per system call, as batchio.BATCH */
#define SLOT 65536            /* receive slot: the largest UDP payload fits whole */
#define REPLY_SLOT 512        /* an RA answer is about 120 bytes */
#define AUTH_LENGTH 4         /* RFC 4380 §5.1.1: type 0x0001, id length 0, auth length 0 */
#define NONCE_END 12          /* auth indicator + 8-byte nonce */
#define RS_OFFSET 13          /* after the confirmation byte */
#define ORIGIN_LENGTH 8       /* RFC 4380 §5.1.1 origin indication: 00 00 | ~port | ~IPv4 */
#define ANSWER_HEAD (NONCE_END + 1 + ORIGIN_LENGTH)
#define MAX_PACKET (REPLY_SLOT - ANSWER_HEAD)
#define MAX_ERRNO 256

static const unsigned char AUTH_NO_ID[AUTH_LENGTH] = {0x00, 0x01, 0x00, 0x00};

enum verdict { SLOW = 0, ANSWER = 1, RATE_LIMITED = 2, FAILED = -1 };

/* ---------------------------------------------------------------- RateTable */

typedef struct {
    uint64_t key; /* the int key plus one: 0 marks an empty cell */
    double due;
} Cell;

typedef struct {
    Cell *cells;
    size_t mask;
    size_t count;
} Generation;

typedef struct {
    PyObject_HEAD
    double interval;
    double tolerance;
    size_t generation; /* keys the young generation holds before it becomes the old one */
    Generation young;
    Generation old;
} RateTable;

static size_t cell_index(const Generation *g, uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 20) & g->mask;
}

static Cell *generation_find(const Generation *g, uint64_t key) {
    size_t i = cell_index(g, key);
    while (g->cells[i].key) {
        if (g->cells[i].key == key)
            return &g->cells[i];
        i = (i + 1) & g->mask;
    }
    return NULL;
}

static Cell *generation_insert(Generation *g, uint64_t key, double due) {
    size_t i = cell_index(g, key);
    while (g->cells[i].key)
        i = (i + 1) & g->mask;
    g->cells[i].key = key;
    g->cells[i].due = due;
    g->count++;
    return &g->cells[i];
}

/* ratelimit.KeyedRateLimit.allow, step for step. */
static int rate_allow(RateTable *t, uint32_t ip, double now) {
    uint64_t key = (uint64_t)ip + 1;
    Cell *cell = generation_find(&t->young, key);
    if (cell == NULL) {
        Cell *old = generation_find(&t->old, key);
        double due = old ? old->due : now;
        if (t->young.count >= t->generation) {
            Generation spent = t->old;
            t->old = t->young;
            memset(spent.cells, 0, (spent.mask + 1) * sizeof(Cell));
            spent.count = 0;
            t->young = spent;
        }
        cell = generation_insert(&t->young, key, due);
    }
    double due = cell->due < now ? now : cell->due;
    if (due - now > t->tolerance)
        return 0;
    cell->due = due + t->interval;
    return 1;
}

static int RateTable_init(RateTable *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"rate", "burst", "capacity", NULL};
    double rate;
    long burst;
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "dln", names, &rate, &burst, &capacity))
        return -1;
    if (!(rate > 0) || burst < 1 || capacity < 2) {
        PyErr_SetString(PyExc_ValueError, "rate must be positive, burst and capacity at least 1 and 2");
        return -1;
    }
    if (self->young.cells != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a RateTable is initialised once");
        return -1;
    }
    self->interval = 1.0 / rate;
    self->tolerance = ((double)burst - 1 + 1e-6) * self->interval;
    self->generation = (size_t)capacity / 2;
    size_t size = 2;
    while (size < 2 * self->generation)
        size <<= 1;
    self->young.cells = PyMem_Calloc(size, sizeof(Cell));
    self->old.cells = PyMem_Calloc(size, sizeof(Cell));
    if (self->young.cells == NULL || self->old.cells == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->young.mask = self->old.mask = size - 1;
    return 0;
}

static void RateTable_dealloc(RateTable *self) {
    PyMem_Free(self->young.cells);
    PyMem_Free(self->old.cells);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_ip(PyObject *value, uint32_t *ip) {
    unsigned long v = PyLong_AsUnsignedLong(value);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (v > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_OverflowError, "an IPv4 address is a 32-bit unsigned int");
        return -1;
    }
    *ip = (uint32_t)v;
    return 0;
}

static PyObject *RateTable_allow(RateTable *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "allow(key, now)");
        return NULL;
    }
    uint32_t ip;
    if (parse_ip(args[0], &ip) < 0)
        return NULL;
    double now = PyFloat_AsDouble(args[1]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(rate_allow(self, ip, now));
}

static Py_ssize_t RateTable_len(RateTable *self) {
    return (Py_ssize_t)(self->young.count + self->old.count);
}

static PyMethodDef RateTable_methods[] = {
    {"allow", (PyCFunction)(void (*)(void))RateTable_allow, METH_FASTCALL,
     "allow(key, now): whether one more event for the IPv4 address `key` at `now` is within the limit."},
    {NULL},
};

static PySequenceMethods RateTable_sequence = {.sq_length = (lenfunc)RateTable_len};

static PyTypeObject RateTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "teredo_appliance._rsfast.RateTable",
    .tp_basicsize = sizeof(RateTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ratelimit.KeyedRateLimit for IPv4 address keys, in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RateTable_init,
    .tp_dealloc = (destructor)RateTable_dealloc,
    .tp_methods = RateTable_methods,
    .tp_as_sequence = &RateTable_sequence,
};

/* ---------------------------------------------------------------- FastPath */

typedef struct {
    PyObject_HEAD
    uint32_t own[2];
    unsigned int port;
    unsigned char rs[2][MAX_PACKET]; /* the canonical RS packets, by cone bit */
    Py_ssize_t rs_length[2];
    unsigned char ra[2][MAX_PACKET]; /* the RA packet answering each */
    Py_ssize_t ra_length[2];
    RateTable *limiter;
    uint32_t (*non_global)[2]; /* (network, mask) pairs */
    Py_ssize_t non_global_count;
    PyObject *reachable; /* or a callable int -> bool, when non_global is None */
} FastPath;

static int copy_packets(PyObject *pair, unsigned char out[2][MAX_PACKET], Py_ssize_t lengths[2], const char *what) {
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_Format(PyExc_TypeError, "%s: a (not cone, cone) pair of bytes", what);
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        PyObject *item = PyTuple_GET_ITEM(pair, i);
        char *data;
        Py_ssize_t length;
        if (PyBytes_AsStringAndSize(item, &data, &length) < 0)
            return -1;
        if (length > MAX_PACKET) {
            PyErr_Format(PyExc_ValueError, "%s: %zd bytes, at most %d", what, length, MAX_PACKET);
            return -1;
        }
        memcpy(out[i], data, (size_t)length);
        lengths[i] = length;
    }
    return 0;
}

static int FastPath_init(FastPath *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"own", "port", "rs", "ra", "limiter", "non_global", "reachable", NULL};
    PyObject *own, *rs, *ra, *limiter, *non_global, *reachable;
    unsigned int port;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OIOOO!OO", names, &own, &port, &rs, &ra, &RateTableType,
                                     &limiter, &non_global, &reachable))
        return -1;
    if (!PyTuple_Check(own) || PyTuple_GET_SIZE(own) != 2 || parse_ip(PyTuple_GET_ITEM(own, 0), &self->own[0]) < 0 ||
        parse_ip(PyTuple_GET_ITEM(own, 1), &self->own[1]) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "own: the (primary, secondary) IPv4 addresses as ints");
        return -1;
    }
    if (port > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "port: 0-65535");
        return -1;
    }
    self->port = port;
    if (copy_packets(rs, self->rs, self->rs_length, "rs") < 0 || copy_packets(ra, self->ra, self->ra_length, "ra") < 0)
        return -1;
    if (non_global == Py_None) {
        if (!PyCallable_Check(reachable)) {
            PyErr_SetString(PyExc_TypeError, "reachable must be callable when non_global is None");
            return -1;
        }
    } else {
        PyObject *seq = PySequence_Fast(non_global, "non_global: a sequence of (network, mask) ints");
        if (seq == NULL)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        self->non_global = PyMem_Calloc((size_t)(n ? n : 1), sizeof(*self->non_global));
        if (self->non_global == NULL) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
                parse_ip(PyTuple_GET_ITEM(pair, 0), &self->non_global[i][0]) < 0 ||
                parse_ip(PyTuple_GET_ITEM(pair, 1), &self->non_global[i][1]) < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "non_global: (network, mask) pairs of ints");
                Py_DECREF(seq);
                return -1;
            }
        }
        self->non_global_count = n;
        Py_DECREF(seq);
        reachable = Py_None;
    }
    Py_INCREF(limiter);
    self->limiter = (RateTable *)limiter;
    Py_INCREF(reachable);
    self->reachable = reachable;
    return 0;
}

static void FastPath_dealloc(FastPath *self) {
    Py_XDECREF(self->limiter);
    Py_XDECREF(self->reachable);
    PyMem_Free(self->non_global);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -1 with an exception set when the Python predicate raised. */
static int is_reachable(FastPath *self, uint32_t ip) {
    if (self->reachable != Py_None) {
        PyObject *value = PyLong_FromUnsignedLong(ip);
        if (value == NULL)
            return -1;
        PyObject *result = PyObject_CallOneArg(self->reachable, value);
        Py_DECREF(value);
        if (result == NULL)
            return -1;
        int truth = PyObject_IsTrue(result);
        Py_DECREF(result);
        return truth;
    }
    for (Py_ssize_t i = 0; i < self->non_global_count; i++)
        if ((ip & self->non_global[i][1]) == self->non_global[i][0])
            return 0;
    return 1;
}

/*
 * The verdict on one datagram from ip:port received on socket `which` (0 primary, 1
 * secondary): ANSWER with the answer in `out` (REPLY_SLOT bytes) and the socket to send it
 * from in `*target`, RATE_LIMITED, SLOW (Python decides), or FAILED (exception set).
 * The order of the tests is ServerMachine.handle()'s.
 */
static int judge_datagram(FastPath *self, const unsigned char *data, Py_ssize_t length, uint32_t ip,
                          unsigned int port, int which, double now, unsigned char *out, Py_ssize_t *out_length,
                          int *target) {
    if (port == 0 || (port == self->port && (ip == self->own[0] || ip == self->own[1])))
        return SLOW; /* the machine counts the drop (port-zero, loop) */
    if (length < RS_OFFSET || memcmp(data, AUTH_NO_ID, AUTH_LENGTH) != 0)
        return SLOW;
    int cone;
    for (cone = 0; cone < 2; cone++)
        if (length - RS_OFFSET == self->rs_length[cone] && memcmp(data + RS_OFFSET, self->rs[cone],
                                                                   (size_t)self->rs_length[cone]) == 0)
            break;
    if (cone == 2)
        return SLOW;
    int reachable = is_reachable(self, ip);
    if (reachable < 0)
        return FAILED;
    if (!reachable)
        return SLOW; /* the machine counts source-not-global */
    if (!rate_allow(self->limiter, ip, now))
        return RATE_LIMITED;
    *target = which ^ cone; /* §5.3.2: the cone bit asks for the answer from the other address */
    memcpy(out, data, NONCE_END);
    uint16_t obfuscated_port = (uint16_t)(port ^ 0xFFFF);
    uint32_t obfuscated_ip = ip ^ 0xFFFFFFFFU;
    unsigned char *p = out + NONCE_END;
    *p++ = 0; /* confirmation byte */
    *p++ = 0;
    *p++ = 0;
    *p++ = (unsigned char)(obfuscated_port >> 8);
    *p++ = (unsigned char)obfuscated_port;
    *p++ = (unsigned char)(obfuscated_ip >> 24);
    *p++ = (unsigned char)(obfuscated_ip >> 16);
    *p++ = (unsigned char)(obfuscated_ip >> 8);
    *p++ = (unsigned char)obfuscated_ip;
    memcpy(p, self->ra[cone], (size_t)self->ra_length[cone]);
    *out_length = ANSWER_HEAD + self->ra_length[cone];
    return ANSWER;
}

static PyObject *FastPath_judge(FastPath *self, PyObject *args) {
    Py_buffer data;
    PyObject *ip_object;
    unsigned int port;
    int which;
    double now;
    if (!PyArg_ParseTuple(args, "y*OIid", &data, &ip_object, &port, &which, &now))
        return NULL;
    uint32_t ip;
    if (parse_ip(ip_object, &ip) < 0 || port > 0xFFFF || (which != 0 && which != 1)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "port 0-65535, which 0 or 1");
        PyBuffer_Release(&data);
        return NULL;
    }
    unsigned char out[REPLY_SLOT];
    Py_ssize_t out_length = 0;
    int target = 0;
    int verdict = judge_datagram(self, data.buf, data.len, ip, port, which, now, out, &out_length, &target);
    PyBuffer_Release(&data);
    switch (verdict) {
    case FAILED:
        return NULL;
    case SLOW:
        Py_RETURN_NONE;
    case RATE_LIMITED:
        return PyUnicode_FromString("rs-rate-limited");
    default:
        return Py_BuildValue("(iy#)", target, out, out_length);
    }
}

static PyMethodDef FastPath_methods[] = {
    {"judge", (PyCFunction)FastPath_judge, METH_VARARGS,
     "judge(data, ip, port, which, now): None (the plain path decides), 'rs-rate-limited', or "
     "(socket index to answer from, answer)."},
    {NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "teredo_appliance._rsfast.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The canonical-RS decisions of ServerMachine, in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastPath_init,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_methods = FastPath_methods,
};

/* ---------------------------------------------------------------- Pump */

typedef struct {
    struct mmsghdr headers[BATCH];
    struct iovec iovecs[BATCH];
    struct sockaddr_in names[BATCH];
    unsigned char data[BATCH][REPLY_SLOT];
    int count;
} Answers;

typedef struct {
    PyObject_HEAD
    FastPath *fast;
    int fd;
    int which;
    int reply_fds[2];
    unsigned char *buffer; /* BATCH receive slots of SLOT bytes, an anonymous mapping */
    struct mmsghdr headers[BATCH];
    struct iovec iovecs[BATCH];
    struct sockaddr_in names[BATCH];
    Answers *answers; /* by socket index */
    int read;
    unsigned long long answered, rate_limited, bytes_in, bytes_out;
    unsigned long long send_errors[MAX_ERRNO];
} Pump;

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"fast_path", "fd", "which", "reply_fds", NULL};
    PyObject *fast;
    int fd, which, primary_fd, secondary_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!ii(ii)", names, &FastPathType, &fast, &fd, &which, &primary_fd,
                                     &secondary_fd))
        return -1;
    if (which != 0 && which != 1) {
        PyErr_SetString(PyExc_ValueError, "which: 0 (primary) or 1 (secondary)");
        return -1;
    }
    if (self->buffer != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Pump is initialised once");
        return -1;
    }
    void *buffer = mmap(NULL, (size_t)BATCH * SLOT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buffer == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->buffer = buffer;
    self->answers = PyMem_Calloc(2, sizeof(Answers));
    if (self->answers == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < BATCH; i++) {
        self->iovecs[i].iov_base = self->buffer + (size_t)i * SLOT;
        self->iovecs[i].iov_len = SLOT;
        self->headers[i].msg_hdr.msg_iov = &self->iovecs[i];
        self->headers[i].msg_hdr.msg_iovlen = 1;
        self->headers[i].msg_hdr.msg_name = &self->names[i];
        for (int s = 0; s < 2; s++) {
            Answers *a = &self->answers[s];
            a->iovecs[i].iov_base = a->data[i];
            a->headers[i].msg_hdr.msg_iov = &a->iovecs[i];
            a->headers[i].msg_hdr.msg_iovlen = 1;
            a->headers[i].msg_hdr.msg_name = &a->names[i];
            a->headers[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        }
    }
    Py_INCREF(fast);
    self->fast = (FastPath *)fast;
    self->fd = fd;
    self->which = which;
    self->reply_fds[0] = primary_fd;
    self->reply_fds[1] = secondary_fd;
    return 0;
}

static void Pump_dealloc(Pump *self) {
    Py_XDECREF(self->fast);
    if (self->buffer != NULL)
        munmap(self->buffer, (size_t)BATCH * SLOT);
    PyMem_Free(self->answers);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void send_answers(Pump *self, int index) {
    Answers *a = &self->answers[index];
    int sent = 0;
    while (sent < a->count) {
        int done;
        Py_BEGIN_ALLOW_THREADS
        done = sendmmsg(self->reply_fds[index], a->headers + sent, (unsigned int)(a->count - sent), 0);
        Py_END_ALLOW_THREADS
        if (done < 0) {
            if (errno == EINTR)
                continue;
            self->send_errors[errno < MAX_ERRNO ? errno : 0]++; /* this answer is lost; the rest still go */
            sent++;
            continue;
        }
        for (int i = sent; i < sent + done; i++)
            self->bytes_out += a->iovecs[i].iov_len;
        self->answered += (unsigned long long)done;
        sent += done;
    }
    a->count = 0;
}

static PyObject *slow_item(const unsigned char *data, unsigned int length, const struct sockaddr_in *name) {
    char host[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &name->sin_addr, host, sizeof host) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(y#(si))", data, (Py_ssize_t)length, host, (int)ntohs(name->sin_port));
}

static PyObject *Pump_receive(Pump *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    for (int i = 0; i < BATCH; i++)
        self->headers[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    int count;
    Py_BEGIN_ALLOW_THREADS
    count = recvmmsg(self->fd, self->headers, BATCH, MSG_DONTWAIT, NULL);
    Py_END_ALLOW_THREADS
    self->read = 0;
    if (count < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->read = count;
    PyObject *slow = PyList_New(0);
    if (slow == NULL)
        return NULL;
    FastPath *fast = self->fast;
    for (int i = 0; i < count; i++) {
        const unsigned char *data = self->buffer + (size_t)i * SLOT;
        unsigned int length = self->headers[i].msg_len;
        const struct sockaddr_in *name = &self->names[i];
        int verdict = SLOW, target = 0;
        if (self->headers[i].msg_hdr.msg_namelen == sizeof(struct sockaddr_in) && name->sin_family == AF_INET) {
            unsigned char answer[REPLY_SLOT];
            Py_ssize_t answer_length = 0;
            verdict = judge_datagram(fast, data, length, ntohl(name->sin_addr.s_addr), ntohs(name->sin_port),
                                     self->which, now, answer, &answer_length, &target);
            if (verdict == ANSWER) {
                Answers *a = &self->answers[target];
                memcpy(a->data[a->count], answer, (size_t)answer_length);
                a->iovecs[a->count].iov_len = (size_t)answer_length;
                a->names[a->count] = *name;
                a->count++;
            }
        }
        if (verdict == FAILED) {
            Py_DECREF(slow);
            return NULL;
        }
        if (verdict == SLOW) {
            PyObject *item = slow_item(data, length, name);
            if (item == NULL || PyList_Append(slow, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(slow);
                return NULL;
            }
            Py_DECREF(item);
            continue;
        }
        self->bytes_in += length;
        if (verdict == RATE_LIMITED)
            self->rate_limited++;
    }
    for (int index = 0; index < 2; index++)
        if (self->answers[index].count)
            send_answers(self, index);
    return slow;
}

static PyObject *Pump_take_counts(Pump *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *errors = PyDict_New();
    if (errors == NULL)
        return NULL;
    for (int code = 0; code < MAX_ERRNO; code++) {
        if (!self->send_errors[code])
            continue;
        PyObject *key = PyLong_FromLong(code), *value = PyLong_FromUnsignedLongLong(self->send_errors[code]);
        if (key == NULL || value == NULL || PyDict_SetItem(errors, key, value) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(value);
            Py_DECREF(errors);
            return NULL;
        }
        Py_DECREF(key);
        Py_DECREF(value);
        self->send_errors[code] = 0;
    }
    PyObject *result = Py_BuildValue("(KKKKN)", self->answered, self->rate_limited, self->bytes_in, self->bytes_out,
                                     errors);
    if (result != NULL)
        self->answered = self->rate_limited = self->bytes_in = self->bytes_out = 0;
    return result;
}

static PyObject *Pump_get_read(Pump *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLong(self->read);
}

static PyMethodDef Pump_methods[] = {
    {"receive", (PyCFunction)Pump_receive, METH_O,
     "receive(now): read one batch, answer the canonical RSs, return the other datagrams."},
    {"take_counts", (PyCFunction)Pump_take_counts, METH_NOARGS,
     "take_counts(): (answered, rate_limited, bytes_in, bytes_out, {errno: sends refused}) since the last call."},
    {NULL},
};

static PyGetSetDef Pump_getset[] = {
    {"read", (getter)Pump_get_read, NULL, "datagrams the last receive() read", NULL},
    {NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "teredo_appliance._rsfast.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Batched receive and answer for one server socket.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
    .tp_getset = Pump_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "teredo_appliance._rsfast",
    "The Teredo server's qualification fast path (RFC 4380 §5.3.2) in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__rsfast(void) {
    PyTypeObject *types[] = {&RateTableType, &FastPathType, &PumpType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    const char *names[] = {"RateTable", "FastPath", "Pump"};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            Py_DECREF(m);
            return NULL;
        }
    }
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
