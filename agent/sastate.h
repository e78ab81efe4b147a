/* The fields of one SA generation (agent.tracker.SAFields; agent.sa.SA and agent.tracker.SeqTracker add
 * none), as one C struct: shared by agent/_sastate.c, which makes it a Python type, and agent/_fastpath.c,
 * which reads and writes it directly.  Numbers are unboxed: a Python int or float per counter cost 24-32
 * bytes each and a pointer chase per datagram; the Python code sees the same attributes through member
 * and getset descriptors.  Sequence numbers, counters and limits are signed 64-bit (-1: none;
 * agent.sa.NO_LIMIT is INT64_MAX), times are doubles, flags are bools; the rest are object references.
 * The first nine fields are the ones every datagram of the compiled walk touches, adjacent.
 *
 * What only loss, reordering, duplicates, late or implausible numbers, fragments, a restart (generation)
 * or a strongSwan name need is in a block of its own (SACold), allocated on the first write of a value
 * other than its default: most SAs of a concentrator never need it, and it is 200 of the bytes an SA
 * would hold.  `obs` and `ident` are read from the key (agent.sakey, below).
 */
#ifndef ESPMETER_SASTATE_H
#define ESPMETER_SASTATE_H

#include <Python.h>

typedef struct {
    PyObject *gaps, *finals, *anchor, *events, *first_at, *name;
    long long held, implausible, max_extent, iv_extent, held_octets, lost, reordered, duplicates, late, incomplete;
    long long x_lost, x_reordered, x_duplicates, x_late, x_incomplete, generation;
    long long iv_max;
    double held_time, held_seen;
} SACold;

typedef struct {
    PyObject_HEAD
    /* every datagram (agent/_fastpath.c walk) */
    long long last, fseq;
    double ftime;
    long long datagrams, packets, octets;
    double last_seen;
    long long iv_min;
    double iv_seen;
    /* the tracker (agent.tracker.SeqTracker) */
    long long first;
    double started;
    /* the SA (agent.sa.SA) */
    PyObject *key, *peer;
    long long tunnel_id; /* -1: None */
    long long x_packets, x_octets, x_datagrams, x_last;
    double first_seen, interval_start;
    SACold *cold; /* NULL: every field of it has its default */
    char udp, active, trial, local;
    char direction; /* SA_IN, SA_OUT or 0 (None) */
} SAFields;
enum { SA_IN = 1, SA_OUT = 2 };

/* Every field by kind, each list once (agent/_sastate.c makes the descriptors from them; the compiled
 * create copies a template through them); the assertion below checks that none is missing. */
#define SA_NUMBER_FIELDS(X) \
    X(last) X(fseq) X(datagrams) X(packets) X(octets) X(iv_min) X(first) X(x_packets) X(x_octets) \
    X(x_datagrams) X(x_last)
#define SA_TIME_FIELDS(X) X(ftime) X(last_seen) X(iv_seen) X(started) X(first_seen) X(interval_start)
#define SA_FLAG_FIELDS(X) X(udp) X(active) X(trial) X(local)
#define SA_OBJECT_FIELDS(X) X(key) X(peer)
#define SA_OPTIONAL_FIELDS(X) X(tunnel_id) /* an int or None (-1): a getset, not a member */
/* the cold block's, with their defaults: EMPTY is the empty tuple, NONE is None */
#define SA_COLD_OBJECT_FIELDS(X) X(gaps, EMPTY) X(finals, EMPTY) X(anchor, EMPTY) X(events, EMPTY) \
    X(first_at, NONE) X(name, NONE)
#define SA_COLD_NUMBER_FIELDS(X) X(held, -1) X(implausible, 0) X(max_extent, 0) X(iv_extent, 0) X(held_octets, 0) \
    X(lost, 0) X(reordered, 0) X(duplicates, 0) X(late, 0) X(incomplete, 0) X(x_lost, 0) X(x_reordered, 0) \
    X(x_duplicates, 0) X(x_late, 0) X(x_incomplete, 0) X(generation, 0) X(iv_max, -1)
#define SA_COLD_TIME_FIELDS(X) X(held_time, 0.0) X(held_seen, 0.0)

#define SA_COUNT(...) +1
_Static_assert(sizeof(SAFields) == sizeof(PyObject) + 8 * (1 + SA_NUMBER_FIELDS(SA_COUNT) SA_TIME_FIELDS(SA_COUNT)
                                                             SA_OBJECT_FIELDS(SA_COUNT) SA_OPTIONAL_FIELDS(SA_COUNT))
                                       + 8 * ((0 SA_FLAG_FIELDS(SA_COUNT) + 1 + 7) / 8),
               "a field of SAFields is missing from the lists below it");
_Static_assert(sizeof(SACold) == 8 * (0 SA_COLD_OBJECT_FIELDS(SA_COUNT) SA_COLD_NUMBER_FIELDS(SA_COUNT)
                                          SA_COLD_TIME_FIELDS(SA_COUNT)),
               "a field of SACold is missing from the lists below it");

#define SA(o) ((SAFields *)(o))
#define SA_DEFAULT_EMPTY PyTuple_New(0) /* CPython's one empty tuple: a new reference, no allocation */
#define SA_DEFAULT_NONE Py_NewRef(Py_None)

/* The SA's cold block, allocated with every default on first use; NULL with MemoryError set. */
static inline SACold *sa_cold(PyObject *sa) {
    SAFields *s = SA(sa);
    if (s->cold != NULL)
        return s->cold;
    SACold *c = PyMem_Malloc(sizeof(SACold));
    if (c == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
#define SA_SET_OBJECT(name, dflt) c->name = SA_DEFAULT_##dflt;
#define SA_SET_VALUE(name, dflt) c->name = (dflt);
    SA_COLD_OBJECT_FIELDS(SA_SET_OBJECT) SA_COLD_NUMBER_FIELDS(SA_SET_VALUE) SA_COLD_TIME_FIELDS(SA_SET_VALUE)
#undef SA_SET_OBJECT
#undef SA_SET_VALUE
    s->cold = c;
    return c;
}

/* The cold block's fields as the rest of the SA reads them, sa_<name>(sa): its default where there is no
 * block (an object is borrowed; sa_empty_tuple is set by each module's init). */
static PyObject *sa_empty_tuple;
#define SA_BORROWED_EMPTY sa_empty_tuple
#define SA_BORROWED_NONE Py_None
#define SA_COLD_GET_OBJECT(name, dflt) \
    static inline PyObject *sa_##name(PyObject *sa) { return SA(sa)->cold ? SA(sa)->cold->name : SA_BORROWED_##dflt; }
#define SA_COLD_GET_NUMBER(name, dflt) \
    static inline long long sa_##name(PyObject *sa) { return SA(sa)->cold ? SA(sa)->cold->name : dflt; }
#define SA_COLD_GET_TIME(name, dflt) \
    static inline double sa_##name(PyObject *sa) { return SA(sa)->cold ? SA(sa)->cold->name : dflt; }
SA_COLD_OBJECT_FIELDS(SA_COLD_GET_OBJECT)
SA_COLD_NUMBER_FIELDS(SA_COLD_GET_NUMBER)
SA_COLD_TIME_FIELDS(SA_COLD_GET_TIME)

/* `direction` as agent.sa.SA has it: None, "in" or "out"; -1 for anything else */
static inline int sa_direction_code(PyObject *v) {
    if (v == Py_None)
        return 0;
    if (!PyUnicode_Check(v))
        return -1;
    return PyUnicode_CompareWithASCIIString(v, "in") == 0 ? SA_IN : PyUnicode_CompareWithASCIIString(v, "out") == 0 ? SA_OUT : -1;
}

/* The key (agent.sakey): the ident (12, 16, 36 or 40 bytes), then, when the SA has an observation point,
 * SA_OBS_LEN bytes of it: ifindex (int64), vlan, inner_vlan (uint16), big-endian, -1 / 0xFFFF for None. */
#define SA_OBS_LEN 12
#define SA_NO_VLAN 0xFFFF
static inline int sa_ident_len_ok(Py_ssize_t n) { return n == 12 || n == 16 || n == 36 || n == 40; }

/* The ident's bytes in `key` and their number, or NULL when it is not a key agent.sakey makes. */
static inline const unsigned char *sa_key_ident(PyObject *key, Py_ssize_t *len) {
    *len = 0;
    if (key == NULL || !PyBytes_CheckExact(key))
        return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(key);
    if (!sa_ident_len_ok(n) && !sa_ident_len_ok(n -= SA_OBS_LEN))
        return NULL;
    *len = n;
    return (const unsigned char *)PyBytes_AS_STRING(key);
}
static inline const unsigned char *sa_ident(PyObject *sa, Py_ssize_t *len) { return sa_key_ident(SA(sa)->key, len); }

/* The SA's observation point: 1 with its fields (-1 for None), 0 none, -1 not a key agent.sakey makes. */
static inline int sa_obs(PyObject *sa, long long *ifindex, int *vlan, int *inner) {
    Py_ssize_t n;
    const unsigned char *k = sa_ident(sa, &n);
    if (k == NULL)
        return -1;
    if (PyBytes_GET_SIZE(SA(sa)->key) == n)
        return 0;
    k += n;
    unsigned long long u = 0;
    for (int i = 0; i < 8; i++)
        u = u << 8 | k[i];
    int v = k[8] << 8 | k[9], w = k[10] << 8 | k[11];
    *ifindex = (long long)u;
    *vlan = v == SA_NO_VLAN ? -1 : v;
    *inner = w == SA_NO_VLAN ? -1 : w;
    return 1;
}

/* An observation point (ifindex, vlan, inner_vlan) packed as a key has it: SA_OBS_LEN bytes written; 0 for
 * None; -1 with ValueError set when it is not one agent.sakey packs (ints, vlans below 0xFFFF, or None). */
static inline int sa_pack_obs(PyObject *obs, unsigned char *out) {
    if (obs == Py_None)
        return 0;
    long long v[3];
    if (!PyTuple_CheckExact(obs) || PyTuple_GET_SIZE(obs) != 3)
        goto bad;
    for (int i = 0; i < 3; i++) {
        PyObject *o = PyTuple_GET_ITEM(obs, i);
        if (o == Py_None)
            v[i] = i == 0 ? -1 : SA_NO_VLAN;
        else if (!PyLong_Check(o) || ((v[i] = PyLong_AsLongLong(o)) == -1 && PyErr_Occurred()) || v[i] < 0
                 || (i > 0 && v[i] >= SA_NO_VLAN)) {
            PyErr_Clear();
            goto bad;
        }
    }
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)((unsigned long long)v[0] >> (56 - 8 * i));
    out[8] = (unsigned char)(v[1] >> 8), out[9] = (unsigned char)v[1];
    out[10] = (unsigned char)(v[2] >> 8), out[11] = (unsigned char)v[2];
    return SA_OBS_LEN;
bad:
    PyErr_SetString(PyExc_ValueError, "an observation point is (ifindex, vlan, inner_vlan): ints or None");
    return -1;
}

#endif
