/* Compiled per-frame fast path of agent.meter (Meter._feed_frames): the in-order datagram of an
 * established SA, for Ethernet / IPv4 without options / unfragmented ESP or UDP 4500 (not the
 * non-ESP marker).  walk() consumes frames from `start` while each one is such a datagram and the
 * next timer is not due, updates the SA's slots exactly as the Python inline path does, and returns
 * where it stopped: Python handles that frame (tick, general decoder) and calls again.
 *
 * The SA objects stay the source of truth: their slots are read and written through the offsets
 * of the class's member descriptors, fetched once at import.  Floats are computed as Python does
 * (sec + usec * 1e-6 in double precision, no contraction; the build passes -ffp-contract=off).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

enum { S_LAST, S_FSEQ, S_FTIME, S_DATAGRAMS, S_PACKETS, S_OCTETS, S_LAST_SEEN, S_IV_MIN, S_IV_SEEN, N_SLOTS };
static const char *slot_names[N_SLOTS] = {
    "last", "fseq", "ftime", "datagrams", "packets", "octets", "last_seen", "iv_min", "iv_seen",
};
static Py_ssize_t slot_off[N_SLOTS];
static PyTypeObject *sa_type;

#define SLOT(o, i) (*(PyObject **)((char *)(o) + slot_off[i]))

static inline uint32_t be16(const unsigned char *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* An exact int that fits in 63 bits, else fail (the frame goes to Python). */
static inline int as_i64(PyObject *o, long long *v) {
    int overflow;
    if (o == NULL || !PyLong_CheckExact(o))
        return 0;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && !(*v == -1 && PyErr_Occurred());
}

static inline int set_slot(PyObject *sa, int i, PyObject *value) {
    if (value == NULL)
        return -1;
    PyObject *old = SLOT(sa, i);
    SLOT(sa, i) = value;
    Py_XDECREF(old);
    return 0;
}

static inline int set_int(PyObject *sa, int i, long long v) { return set_slot(sa, i, PyLong_FromLongLong(v)); }

/* last_seen: overwrite the float in place when the slot holds the only reference to it. */
static inline int set_time(PyObject *sa, double now) {
    PyObject *old = SLOT(sa, S_LAST_SEEN);
    if (old != NULL && PyFloat_CheckExact(old) && Py_REFCNT(old) == 1) {
        ((PyFloatObject *)old)->ob_fval = now;
        return 0;
    }
    return set_slot(sa, S_LAST_SEEN, PyFloat_FromDouble(now));
}

/* The SA this frame continues in order, or NULL (not an error) when Python must take the frame. */
static PyObject *in_order_sa(PyObject *sas, PyObject *obs, const unsigned char *p, uint32_t caplen,
                             uint32_t *octets, long long *last, const unsigned char **seqp) {
    unsigned char ident[16];
    Py_ssize_t ident_len;
    const unsigned char *seq;
    if (caplen < 42 || be16(p + 12) != 0x0800 || p[14] != 0x45 || (be16(p + 20) & 0x3FFF))
        return NULL;
    uint32_t total = be16(p + 16);
    if (p[23] == 50) {
        if (total < 28)
            return NULL;
        memcpy(ident, p + 26, 12);
        ident_len = 12;
        seq = p + 38;
    } else if (p[23] == 17) {
        /* as agent.decode: UDP length within the IP payload, at least 8 octets of ESP header after it,
         * a non-zero SPI (zero is the non-ESP marker: IKE) */
        if (caplen < 50 || total < 36 || (be16(p + 34) != 4500 && be16(p + 36) != 4500))
            return NULL;
        uint32_t ulen = be16(p + 38);
        if (ulen < 16 || ulen > total - 20 || be32(p + 42) == 0)
            return NULL;
        memcpy(ident, p + 26, 12);
        memcpy(ident + 12, p + 42, 4);
        ident_len = 16;
        seq = p + 46;
    } else {
        return NULL;
    }
    PyObject *ib = PyBytes_FromStringAndSize((const char *)ident, ident_len);
    if (ib == NULL)
        return NULL;
    PyObject *key = PyTuple_Pack(2, obs, ib);
    Py_DECREF(ib);
    if (key == NULL)
        return NULL;
    PyObject *sa = PyDict_GetItemWithError(sas, key); /* borrowed */
    Py_DECREF(key);
    if (sa == NULL || Py_TYPE(sa) != sa_type)
        return NULL;
    long long l, fseq;
    if (!as_i64(SLOT(sa, S_LAST), &l) || l < -1)
        return NULL;
    PyObject *fo = SLOT(sa, S_FSEQ);
    if (fo == NULL || !PyLong_CheckExact(fo))
        return NULL;
    int overflow;
    fseq = PyLong_AsLongLongAndOverflow(fo, &overflow);
    if (overflow < 0 || (!overflow && (fseq == -1 && PyErr_Occurred())))
        return NULL;
    if (!overflow && !(l + 1 < fseq)) /* overflow > 0: fseq is NO_LIMIT, above any number */
        return NULL;
    PyObject *ft = SLOT(sa, S_FTIME);
    if (ft == NULL || !PyFloat_CheckExact(ft))
        return NULL;
    *octets = total;
    *last = l;
    *seqp = seq;
    return sa;
}

static PyObject *walk(PyObject *self, PyObject *args) {
    Py_buffer buf, meta;
    Py_ssize_t start;
    PyObject *sas, *obs;
    double due;
    if (!PyArg_ParseTuple(args, "y*y*nO!Od", &buf, &meta, &start, &PyDict_Type, &sas, &obs, &due))
        return NULL;
    const unsigned char *b = buf.buf;
    const unsigned char *m = meta.buf;
    Py_ssize_t n = meta.len / 16, i = start < 0 ? 0 : start;
    unsigned long long octets = 0;
    for (; i < n; i++) {
        uint32_t r[4];
        memcpy(r, m + 16 * i, 16);
        double now = (double)r[0] + (double)r[1] * 1e-6;
        if (now >= due || (Py_ssize_t)r[2] + r[3] > buf.len)
            break;
        const unsigned char *p = b + r[2];
        uint32_t total;
        long long last;
        const unsigned char *seq;
        PyObject *sa = in_order_sa(sas, obs, p, r[3], &total, &last, &seq);
        if (sa == NULL) {
            if (PyErr_Occurred())
                goto error;
            break;
        }
        if (!(now <= PyFloat_AS_DOUBLE(SLOT(sa, S_FTIME))) || be32(seq) != (uint32_t)(last + 1))
            break;
        long long datagrams, packets, sa_octets, iv_min;
        if (!as_i64(SLOT(sa, S_DATAGRAMS), &datagrams) || !as_i64(SLOT(sa, S_PACKETS), &packets)
            || !as_i64(SLOT(sa, S_OCTETS), &sa_octets) || !as_i64(SLOT(sa, S_IV_MIN), &iv_min)) {
            if (PyErr_Occurred())
                goto error;
            break;
        }
        PyObject *iv_seen = SLOT(sa, S_IV_SEEN);
        if (iv_min < 0 && (iv_seen == NULL || !PyFloat_CheckExact(iv_seen)))
            break;
        if (set_int(sa, S_LAST, last + 1) < 0 || set_int(sa, S_DATAGRAMS, datagrams + 1) < 0
            || set_int(sa, S_PACKETS, packets + 1) < 0 || set_int(sa, S_OCTETS, sa_octets + total) < 0
            || set_time(sa, now) < 0)
            goto error;
        if (iv_min < 0) {
            PyObject *l = SLOT(sa, S_LAST);
            Py_INCREF(l);
            if (set_slot(sa, S_IV_MIN, l) < 0)
                goto error;
            /* the interval's first accepted number: maybe its first arrival */
            if (PyFloat_AS_DOUBLE(iv_seen) < 0 && set_slot(sa, S_IV_SEEN, PyFloat_FromDouble(now)) < 0)
                goto error;
        }
        octets += r[3];
    }
    PyBuffer_Release(&buf);
    PyBuffer_Release(&meta);
    return Py_BuildValue("nK", i, octets);
error:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&meta);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(buf, meta, start, sas, obs, due) -> (stop, octets): consume in-order ESP frames from `start`."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

/* The slot offsets of agent.sa.SA, from its member descriptors (inherited ones included). */
static int bind_sa(void) {
    PyObject *mod = PyImport_ImportModule("agent.sa");
    if (mod == NULL)
        return -1;
    PyObject *cls = PyObject_GetAttrString(mod, "SA");
    Py_DECREF(mod);
    if (cls == NULL)
        return -1;
    if (!PyType_Check(cls)) {
        Py_DECREF(cls);
        PyErr_SetString(PyExc_ImportError, "agent.sa.SA is not a class");
        return -1;
    }
    for (int i = 0; i < N_SLOTS; i++) {
        PyObject *d = PyObject_GetAttrString(cls, slot_names[i]);
        if (d == NULL) {
            Py_DECREF(cls);
            return -1;
        }
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            slot_off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            Py_DECREF(cls);
            PyErr_Format(PyExc_ImportError, "agent.sa.SA.%s is not a slot", slot_names[i]);
            return -1;
        }
    }
    sa_type = (PyTypeObject *)cls; /* kept for the module's lifetime */
    return 0;
}

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (bind_sa() < 0)
        return NULL;
    return PyModule_Create(&module);
}
