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
 * other than its default: most SAs of a concentrator never need it, and it is 176 of the bytes an SA
 * would hold.  `obs` and `ident` are the key's two items.
 */
#ifndef ESPMETER_SASTATE_H
#define ESPMETER_SASTATE_H

#include <Python.h>

typedef struct {
    PyObject *gaps, *finals, *anchor, *events, *first_at, *name;
    long long held, implausible, max_extent, iv_extent, held_octets, reordered, duplicates, late, incomplete;
    long long x_reordered, x_duplicates, x_late, x_incomplete, generation;
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
    long long first, lost, iv_max;
    double started;
    /* the SA (agent.sa.SA) */
    PyObject *key, *direction, *peer, *tunnel_id;
    long long x_packets, x_octets, x_datagrams, x_lost, x_last;
    double first_seen, interval_start;
    SACold *cold; /* NULL: every field of it has its default */
    char udp, active, trial, local;
} SAFields;

/* Every field by kind, each list once (agent/_sastate.c makes the descriptors from them; the compiled
 * create copies a template through them); the assertion below checks that none is missing. */
#define SA_NUMBER_FIELDS(X) \
    X(last) X(fseq) X(datagrams) X(packets) X(octets) X(iv_min) X(first) X(lost) X(iv_max) X(x_packets) \
    X(x_octets) X(x_datagrams) X(x_lost) X(x_last)
#define SA_TIME_FIELDS(X) X(ftime) X(last_seen) X(iv_seen) X(started) X(first_seen) X(interval_start)
#define SA_FLAG_FIELDS(X) X(udp) X(active) X(trial) X(local)
#define SA_OBJECT_FIELDS(X) X(key) X(direction) X(peer) X(tunnel_id)
/* the cold block's, with their defaults: EMPTY is the empty tuple, NONE is None */
#define SA_COLD_OBJECT_FIELDS(X) X(gaps, EMPTY) X(finals, EMPTY) X(anchor, EMPTY) X(events, EMPTY) \
    X(first_at, NONE) X(name, NONE)
#define SA_COLD_NUMBER_FIELDS(X) X(held, -1) X(implausible, 0) X(max_extent, 0) X(iv_extent, 0) X(held_octets, 0) \
    X(reordered, 0) X(duplicates, 0) X(late, 0) X(incomplete, 0) X(x_reordered, 0) X(x_duplicates, 0) X(x_late, 0) \
    X(x_incomplete, 0) X(generation, 0)
#define SA_COLD_TIME_FIELDS(X) X(held_time, 0.0) X(held_seen, 0.0)

#define SA_COUNT(...) +1
_Static_assert(sizeof(SAFields) == sizeof(PyObject) + 8 * (1 + SA_NUMBER_FIELDS(SA_COUNT) SA_TIME_FIELDS(SA_COUNT)
                                                             SA_OBJECT_FIELDS(SA_COUNT))
                                       + 8 * ((0 SA_FLAG_FIELDS(SA_COUNT) + 7) / 8),
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

/* the key's items (borrowed), or NULL when the key is not an (obs, ident) pair */
static inline PyObject *sa_key_item(PyObject *sa, Py_ssize_t i) {
    PyObject *key = SA(sa)->key;
    return key != NULL && PyTuple_CheckExact(key) && PyTuple_GET_SIZE(key) == 2 ? PyTuple_GET_ITEM(key, i) : NULL;
}
static inline PyObject *sa_obs(PyObject *sa) { return sa_key_item(sa, 0); }
static inline PyObject *sa_ident(PyObject *sa) { return sa_key_item(sa, 1); }

#endif
