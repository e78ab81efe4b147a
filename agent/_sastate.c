/* agent._sastate.SAFields: the base type of agent.tracker.SeqTracker and agent.sa.SA where it is built
 * (agent/sastate.h says why), in a module of its own so that agent.tracker can import it before
 * agent/_fastpath.c, which binds agent.sa.SA at import, exists.  agent.tracker._SAFields is the Python
 * twin (slots, the same names): the fallback where nothing compiles, and the oracle.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>

#include "sastate.h"

#define I64(name) {#name, T_LONGLONG, offsetof(SAFields, name), 0, NULL},
#define F64(name) {#name, T_DOUBLE, offsetof(SAFields, name), 0, NULL},
#define BOOL(name) {#name, T_BOOL, offsetof(SAFields, name), 0, NULL},
#define OBJ(name) {#name, T_OBJECT_EX, offsetof(SAFields, name), 0, NULL},

static PyMemberDef members[] = {
    SA_NUMBER_FIELDS(I64) SA_TIME_FIELDS(F64) SA_FLAG_FIELDS(BOOL) SA_OBJECT_FIELDS(OBJ)
    {NULL}};

static int no_delete(const char *name) {
    PyErr_Format(PyExc_TypeError, "can't delete SA field %s", name);
    return -1;
}

/* The cold block's fields: a default written where there is no block allocates none. */
#define COLD_OBJECT(name, dflt)                                                             \
    static PyObject *get_##name(PyObject *sa, void *unused) {                               \
        (void)unused;                                                                       \
        return Py_NewRef(sa_##name(sa));                                                    \
    }                                                                                       \
    static int set_##name(PyObject *sa, PyObject *v, void *unused) {                        \
        (void)unused;                                                                       \
        if (v == NULL)                                                                      \
            return no_delete(#name);                                                        \
        if (SA(sa)->cold == NULL && v == SA_BORROWED_##dflt)                                \
            return 0;                                                                       \
        SACold *c = sa_cold(sa);                                                            \
        if (c == NULL)                                                                      \
            return -1;                                                                      \
        Py_SETREF(c->name, Py_NewRef(v));                                                   \
        return 0;                                                                           \
    }
#define COLD_NUMBER(name, dflt)                                                             \
    static PyObject *get_##name(PyObject *sa, void *unused) {                               \
        (void)unused;                                                                       \
        return PyLong_FromLongLong(sa_##name(sa));                                          \
    }                                                                                       \
    static int set_##name(PyObject *sa, PyObject *v, void *unused) {                        \
        (void)unused;                                                                       \
        if (v == NULL)                                                                      \
            return no_delete(#name);                                                        \
        if (!PyLong_Check(v)) {                                                             \
            PyErr_Format(PyExc_TypeError, "SA field %s takes an int", #name);               \
            return -1;                                                                      \
        }                                                                                   \
        long long x = PyLong_AsLongLong(v);                                                 \
        if (x == -1 && PyErr_Occurred())                                                    \
            return -1;                                                                      \
        if (SA(sa)->cold == NULL && x == (dflt))                                            \
            return 0;                                                                       \
        SACold *c = sa_cold(sa);                                                            \
        if (c == NULL)                                                                      \
            return -1;                                                                      \
        c->name = x;                                                                        \
        return 0;                                                                           \
    }
#define COLD_TIME(name, dflt)                                                               \
    static PyObject *get_##name(PyObject *sa, void *unused) {                               \
        (void)unused;                                                                       \
        return PyFloat_FromDouble(sa_##name(sa));                                           \
    }                                                                                       \
    static int set_##name(PyObject *sa, PyObject *v, void *unused) {                        \
        (void)unused;                                                                       \
        if (v == NULL)                                                                      \
            return no_delete(#name);                                                        \
        double x = PyFloat_AsDouble(v);                                                     \
        if (x == -1.0 && PyErr_Occurred())                                                  \
            return -1;                                                                      \
        if (SA(sa)->cold == NULL && x == (dflt) && !signbit(x))                             \
            return 0;                                                                       \
        SACold *c = sa_cold(sa);                                                            \
        if (c == NULL)                                                                      \
            return -1;                                                                      \
        c->name = x;                                                                        \
        return 0;                                                                           \
    }
SA_COLD_OBJECT_FIELDS(COLD_OBJECT)
SA_COLD_NUMBER_FIELDS(COLD_NUMBER)
SA_COLD_TIME_FIELDS(COLD_TIME)

/* an int or None: -1 in the struct for None */
#define OPTIONAL(name)                                                                      \
    static PyObject *get_##name(PyObject *sa, void *unused) {                               \
        (void)unused;                                                                       \
        return SA(sa)->name < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(SA(sa)->name);    \
    }                                                                                       \
    static int set_##name(PyObject *sa, PyObject *v, void *unused) {                        \
        (void)unused;                                                                       \
        if (v == NULL)                                                                      \
            return no_delete(#name);                                                        \
        if (v == Py_None) {                                                                 \
            SA(sa)->name = -1;                                                              \
            return 0;                                                                       \
        }                                                                                   \
        long long x = PyLong_CheckExact(v) ? PyLong_AsLongLong(v) : -1;                     \
        if (x < 0) {                                                                        \
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_OverflowError)) {         \
                PyErr_Clear();                                                              \
                PyErr_Format(PyExc_TypeError, "SA field %s takes None or an int in 0..2^63", #name); \
            }                                                                               \
            return -1;                                                                      \
        }                                                                                   \
        SA(sa)->name = x;                                                                   \
        return 0;                                                                           \
    }
SA_OPTIONAL_FIELDS(OPTIONAL)

/* direction: None, "in" or "out", a byte in the struct */
static PyObject *str_in, *str_out;
static PyObject *get_direction(PyObject *sa, void *unused) {
    (void)unused;
    int d = SA(sa)->direction;
    return Py_NewRef(d == SA_IN ? str_in : d == SA_OUT ? str_out : Py_None);
}
static int set_direction(PyObject *sa, PyObject *v, void *unused) {
    (void)unused;
    if (v == NULL)
        return no_delete("direction");
    int d = sa_direction_code(v);
    if (d < 0) {
        PyErr_SetString(PyExc_TypeError, "SA field direction takes None, 'in' or 'out'");
        return -1;
    }
    SA(sa)->direction = (char)d;
    return 0;
}

/* obs and ident, read from the key (agent.sakey) */
static PyObject *no_key(void) {
    PyErr_SetString(PyExc_AttributeError, "the SA has no key agent.sakey makes");
    return NULL;
}
static PyObject *get_obs(PyObject *sa, void *unused) {
    (void)unused;
    long long ifindex;
    int vlan, inner, rc = sa_obs(sa, &ifindex, &vlan, &inner);
    if (rc <= 0)
        return rc == 0 ? Py_NewRef(Py_None) : no_key();
    PyObject *i = ifindex < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(ifindex);
    PyObject *v = vlan < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(vlan);
    PyObject *w = inner < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(inner);
    PyObject *t = i == NULL || v == NULL || w == NULL ? NULL : PyTuple_Pack(3, i, v, w);
    Py_XDECREF(i);
    Py_XDECREF(v);
    Py_XDECREF(w);
    return t;
}
static PyObject *get_ident(PyObject *sa, void *unused) {
    (void)unused;
    Py_ssize_t n;
    const unsigned char *k = sa_ident(sa, &n);
    if (k == NULL)
        return no_key();
    PyObject *key = SA(sa)->key;
    return n == PyBytes_GET_SIZE(key) ? Py_NewRef(key) : PyBytes_FromStringAndSize((const char *)k, n);
}

#define GETSET(name, ...) {#name, (getter)get_##name, (setter)set_##name, NULL, NULL},
static PyGetSetDef getset[] = {
    SA_COLD_OBJECT_FIELDS(GETSET) SA_COLD_NUMBER_FIELDS(GETSET) SA_COLD_TIME_FIELDS(GETSET) SA_OPTIONAL_FIELDS(GETSET)
    GETSET(direction)
    {"obs", (getter)get_obs, NULL, "the key's observation point", NULL},
    {"ident", (getter)get_ident, NULL, "the key's addresses [+ ports] + SPI", NULL},
    {NULL}};

static int traverse(SAFields *self, visitproc visit, void *arg) {
#define VISIT(name, ...) Py_VISIT(self->name);
    SA_OBJECT_FIELDS(VISIT)
#undef VISIT
    if (self->cold != NULL) {
#define VISIT(name, ...) Py_VISIT(self->cold->name);
        SA_COLD_OBJECT_FIELDS(VISIT)
#undef VISIT
    }
    return 0;
}

static int clear(SAFields *self) {
#define CLEAR(name, ...) Py_CLEAR(self->name);
    SA_OBJECT_FIELDS(CLEAR)
#undef CLEAR
    SACold *c = self->cold;
    if (c != NULL) {
        self->cold = NULL;
#define CLEAR(name, ...) Py_CLEAR(c->name);
        SA_COLD_OBJECT_FIELDS(CLEAR)
#undef CLEAR
        PyMem_Free(c);
    }
    return 0;
}

/* A restart leaves the old generation's `peer` pointing one way at its partner, whose own old generation
 * points at the next...: a chain of SAs as long as the tunnel's restarts, alive while its head is (a held
 * SA, a history).  Freed by recursion through `peer`, 60 000 of them overflowed the C stack: CPython's
 * guard (the trashcan) is for types with a GC header, which SA does not have (untracked below).  So the
 * chain is taken apart here, one SA after the other. */
static PyTypeObject SAFieldsType;
static void release_peers(SAFields *self) {
    PyObject *next = self->peer;
    self->peer = NULL;
    while (next != NULL && Py_REFCNT(next) == 1 && PyObject_TypeCheck(next, &SAFieldsType)) {
        PyObject *after = SA(next)->peer;
        SA(next)->peer = NULL;
        Py_DECREF(next); /* freed, its own peer already taken: no recursion */
        next = after;
    }
    Py_XDECREF(next);
}

static void dealloc(SAFields *self) {
    if (PyObject_IS_GC((PyObject *)self)) /* not agent.tracker's classes (untracked below) */
        PyObject_GC_UnTrack(self);
    release_peers(self);
    clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject SAFieldsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent._sastate.SAFields",
    .tp_doc = "The fields of one SA generation, unboxed (agent/sastate.h).",
    .tp_basicsize = sizeof(SAFields),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)dealloc,
    .tp_traverse = (traverseproc)traverse,
    .tp_clear = (inquiry)clear,
    .tp_members = members,
    .tp_getset = getset,
};

/* untracked(cls): cls, a class of SAFields that adds no field (__slots__ = ()), made a type whose instances
 * the cyclic collector neither allocates a header for nor walks: 16 of the ~300 bytes an SA costs, and the
 * collector's walks of a table of a million SAs.  CPython gives every class a `class` statement makes that
 * header (Py_TPFLAGS_HAVE_GC), so it is taken off here, before the class has an instance: only as the
 * decorator of its `class` statement (an instance made before would keep its header and be freed at the
 * wrong address; that cannot be checked here, only that the class was not untracked already).  Its
 * deallocation (subtype_dealloc) has a branch for such types; release_peers above stands in for the
 * recursion guard that branch lacks.  An SA's references form no cycle but a tunnel's pair,
 * which agent.satable.SATable breaks when one of the two leaves the table (_forget) or when it goes itself
 * (__del__).  A subclass a `class` statement makes of it is tracked again, and collected as any. */
static PyObject *untracked(PyObject *unused, PyObject *cls) {
    (void)unused;
    PyTypeObject *t = (PyTypeObject *)cls;
    if (!PyType_Check(cls) || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE) || !PyType_IsSubtype(t, &SAFieldsType)
        || t->tp_basicsize != sizeof(SAFields) || t->tp_dictoffset != 0 || t->tp_weaklistoffset != 0
        || (t->tp_flags & Py_TPFLAGS_MANAGED_DICT) || (t->tp_base != &SAFieldsType && PyType_IS_GC(t->tp_base))
        || t->tp_free != PyObject_GC_Del) {
        PyErr_SetString(PyExc_TypeError, "untracked() takes a class of SAFields (or of an untracked one) with "
                                         "__slots__ = (), not untracked already");
        return NULL;
    }
    t->tp_flags &= ~Py_TPFLAGS_HAVE_GC;
    t->tp_free = PyObject_Free;
    PyType_Modified(t);
    return Py_NewRef(cls);
}

static PyMethodDef functions[] = {
    {"untracked", untracked, METH_O, "cls, a class of SAFields with __slots__ = (), made untracked (no GC header)"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sastate", NULL, -1, functions};

PyMODINIT_FUNC PyInit__sastate(void) {
    if ((sa_empty_tuple = PyTuple_New(0)) == NULL || (str_in = PyUnicode_InternFromString("in")) == NULL
        || (str_out = PyUnicode_InternFromString("out")) == NULL || PyType_Ready(&SAFieldsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "SAFields", (PyObject *)&SAFieldsType) < 0)
        Py_CLEAR(m);
    return m;
}
