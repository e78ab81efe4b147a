/* Compiled record encoding of exporter.codec.ObjectPacker and exporter.encoding's variant selectors.
 *
 * A Packer writes one data record from a record object's attributes (or constants) in template order:
 * unsigned integers big-endian (1, 2, 4 or 8 octets), addresses as their 4 or 16 packed octets, strings
 * with their 1-octet length. Any value it does not write exactly as the Python packer's struct call would
 * (None, out of range, not an int, an address of another length, a string of 255 octets or more) sends
 * the whole record to that Python packer, the oracle, which adapts it. A Selector computes a record's
 * template mask from its layout's group conditions and returns the packer of that variant.
 *
 * Attributes are read as Python does, with a shortcut for __slots__: the offset of the class's member
 * descriptor is cached per path step with the class's version tag (a changed class is looked up again).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define MAX_FIELDS 128
#define MAX_PATH 4

typedef struct {
    PyObject *name;
    PyTypeObject *type; /* borrowed: the class whose slot offset is cached (its version tag guards it) */
    unsigned int version;
    Py_ssize_t offset;
} Step;

typedef struct {
    Step steps[MAX_PATH];
    int nsteps; /* 0: the record itself */
} Path;

/* ---- attribute paths ------------------------------------------------------------------------------ */

static int
path_init(Path *p, PyObject *names)
{
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) > MAX_PATH) {
        PyErr_SetString(PyExc_ValueError, "an attribute path is a tuple of at most 4 names");
        return -1;
    }
    p->nsteps = (int)PyTuple_GET_SIZE(names);
    for (int i = 0; i < p->nsteps; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "attribute names are str");
            return -1;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        p->steps[i] = (Step){name, NULL, 0, 0};
    }
    return 0;
}

static void
path_clear(Path *p)
{
    for (int i = 0; i < p->nsteps; i++)
        Py_CLEAR(p->steps[i].name);
    p->nsteps = 0;
}

static PyObject *
step_get(Step *s, PyObject *obj) /* new reference */
{
    PyTypeObject *t = Py_TYPE(obj);
    if (s->type == t && s->offset && (t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && t->tp_version_tag == s->version) {
        PyObject *v = *(PyObject **)((char *)obj + s->offset);
        if (v) {
            Py_INCREF(v);
            return v;
        }
    } else {
        PyObject *descr = _PyType_Lookup(t, s->name); /* borrowed; gives the class a version tag */
        s->type = NULL;
        if (descr && Py_IS_TYPE(descr, &PyMemberDescr_Type) && (t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
            PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READ_RESTRICTED)) {
                s->type = t;
                s->version = t->tp_version_tag;
                s->offset = m->offset;
            }
        }
    }
    return PyObject_GetAttr(obj, s->name);
}

static PyObject *
path_get(Path *p, PyObject *obj) /* new reference */
{
    Py_INCREF(obj);
    for (int i = 0; i < p->nsteps && obj; i++) {
        PyObject *next = step_get(&p->steps[i], obj);
        Py_DECREF(obj);
        obj = next;
    }
    return obj;
}

/* ---- Packer --------------------------------------------------------------------------------------- */

enum { K_UINT, K_ADDR, K_STRING };

typedef struct {
    Path path;
    PyObject *constant; /* NULL: read the path */
    PyObject *table, *fallback; /* a derived value: table.get(the path's value, fallback) */
    int kind;
    int size; /* octets of an integer or an address */
    unsigned long long max;
} Field;

typedef struct {
    PyObject_HEAD
    Field fields[MAX_FIELDS];
    int nfields;
    PyObject *fallback;
} Packer;

static int
field_init(Field *f, PyObject *spec)
{
    /* spec: (path tuple or None, constant, format, table or None, default) with format "B", "H", "L", "Q",
     * "4s", "16s" or ""; with a table (a dict) the value is table.get(the path's value, default) */
    PyObject *path, *constant, *fmt, *table, *fallback;
    if (!PyArg_ParseTuple(spec, "OOUOO", &path, &constant, &fmt, &table, &fallback))
        return -1;
    f->path.nsteps = 0;
    f->constant = f->table = f->fallback = NULL;
    if (table != Py_None) {
        if (!PyDict_Check(table)) {
            PyErr_SetString(PyExc_TypeError, "a table is a dict");
            return -1;
        }
        Py_INCREF(table);
        f->table = table;
        Py_INCREF(fallback);
        f->fallback = fallback;
    }
    if (path == Py_None) {
        Py_INCREF(constant);
        f->constant = constant;
    } else if (path_init(&f->path, path) < 0) {
        return -1;
    }
    static const struct { const char *fmt; int kind, size; } kinds[] = {
        {"B", K_UINT, 1}, {"H", K_UINT, 2}, {"L", K_UINT, 4}, {"Q", K_UINT, 8}, {"4s", K_ADDR, 4},
        {"16s", K_ADDR, 16}, {"", K_STRING, 0},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (PyUnicode_CompareWithASCIIString(fmt, kinds[i].fmt) == 0) {
            f->kind = kinds[i].kind;
            f->size = kinds[i].size;
            f->max = f->size == 8 ? UINT64_MAX : (1ULL << (8 * f->size)) - 1;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "format %R is not supported by the compiled packer", fmt);
    return -1;
}

static void
Packer_dealloc(Packer *self)
{
    for (int i = 0; i < self->nfields; i++) {
        path_clear(&self->fields[i].path);
        Py_CLEAR(self->fields[i].constant);
        Py_CLEAR(self->fields[i].table);
        Py_CLEAR(self->fields[i].fallback);
    }
    Py_CLEAR(self->fallback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Packer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *specs, *fallback;
    static char *kwlist[] = {"fields", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Packer", kwlist, &specs, &fallback))
        return NULL;
    PyObject *seq = PySequence_Fast(specs, "fields must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_FIELDS) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "at most %d fields", MAX_FIELDS);
    }
    Packer *self = (Packer *)type->tp_alloc(type, 0);
    if (!self) {
        Py_DECREF(seq);
        return NULL;
    }
    Py_INCREF(fallback);
    self->fallback = fallback;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (field_init(&self->fields[i], PySequence_Fast_GET_ITEM(seq, i)) < 0) {
            Py_DECREF(seq);
            Py_DECREF(self);
            return NULL;
        }
        self->nfields = (int)i + 1;
    }
    Py_DECREF(seq);
    return (PyObject *)self;
}

/* 1: written exactly as struct would, 0: the Python packer must adapt it, -1: error */
static int
check_value(const Field *f, PyObject *v, unsigned long long *u, Py_ssize_t *len, const char **str)
{
    switch (f->kind) {
    case K_UINT: {
        if (!PyLong_Check(v))
            return 0;
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow); /* no byte-array conversion, unlike unsigned */
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (overflow < 0 || x < 0)
            return 0;
        if (overflow > 0) {
            *u = PyLong_AsUnsignedLongLong(v);
            if (*u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
        } else {
            *u = (unsigned long long)x;
        }
        return *u <= f->max;
    }
    case K_ADDR:
        return PyBytes_Check(v) && PyBytes_GET_SIZE(v) == f->size;
    default:
        if (v == Py_None) {
            *len = 0;
            return 1;
        }
        if (!PyUnicode_Check(v))
            return 0;
        *str = PyUnicode_AsUTF8AndSize(v, len);
        if (!*str) {
            PyErr_Clear();
            return 0; /* not encodable: the Python packer raises as it always did */
        }
        return *len < 255;
    }
}

static inline void
put_be(unsigned char *w, uint64_t x, int size)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t be = __builtin_bswap64(x) >> (64 - 8 * size); /* its low `size` octets, in memory order */
    memcpy(w, &be, size);
#else
    for (int b = size - 1; b >= 0; b--)
        *w++ = (unsigned char)(x >> (8 * b));
#endif
}

static PyObject *
Packer_pack(Packer *self, PyObject *record)
{
    unsigned char buf[MAX_FIELDS * 256], *w = buf; /* a field takes at most 256 octets (1 + a string) */
    for (int n = 0; n < self->nfields; n++) {
        Field *f = &self->fields[n];
        PyObject *v = f->constant ? (Py_INCREF(f->constant), f->constant) : path_get(&f->path, record);
        if (!v)
            return NULL;
        if (f->table) {
            PyObject *d = PyDict_GetItemWithError(f->table, v);
            Py_DECREF(v);
            if (!d && PyErr_Occurred())
                return NULL;
            v = d ? d : f->fallback;
            Py_INCREF(v);
        }
        unsigned long long u = 0;
        Py_ssize_t len = 0;
        const char *str = NULL;
        int r = check_value(f, v, &u, &len, &str);
        if (r <= 0) {
            Py_DECREF(v);
            return r < 0 ? NULL : PyObject_CallOneArg(self->fallback, record);
        }
        if (f->kind == K_UINT) {
            put_be(w, u, f->size);
            w += f->size;
        } else if (f->kind == K_ADDR) {
            memcpy(w, PyBytes_AS_STRING(v), f->size);
            w += f->size;
        } else {
            *w++ = (unsigned char)len;
            memcpy(w, str, len);
            w += len;
        }
        Py_DECREF(v);
    }
    return PyBytes_FromStringAndSize((const char *)buf, w - buf);
}

static PyMethodDef Packer_methods[] = {
    {"pack", (PyCFunction)Packer_pack, METH_O, "The data record of a record object."},
    {NULL},
};

static PyTypeObject PackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "exporter._encode.Packer",
    .tp_basicsize = sizeof(Packer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Packer(fields, fallback): fields are (path or None, constant, struct format) in template order.",
    .tp_new = Packer_new,
    .tp_dealloc = (destructor)Packer_dealloc,
    .tp_methods = Packer_methods,
};

/* ---- Selector ------------------------------------------------------------------------------------- */

enum { OP_SET, OP_TRUE, OP_EQ, OP_LEN_EQ, OP_LEN_NE };

typedef struct {
    Path path;
    int op;
    PyObject *arg;
    Py_ssize_t len;
} Test;

typedef struct {
    PyObject_HEAD
    Test *tests;
    int ntests;
    long *bits; /* the group bit of each test; a group is present when all its tests pass */
    PyObject *packers; /* dict: mask -> packer */
    PyObject *make; /* make(mask) -> packer, on a mask not seen yet */
} Selector;

static void
Selector_dealloc(Selector *self)
{
    for (int i = 0; i < self->ntests; i++) {
        path_clear(&self->tests[i].path);
        Py_CLEAR(self->tests[i].arg);
    }
    PyMem_Free(self->tests);
    PyMem_Free(self->bits);
    Py_CLEAR(self->packers);
    Py_CLEAR(self->make);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Selector_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* tests: ((bit, path tuple, op, arg), ...) with op "set", "true", "eq", "len_eq" or "len_ne" */
    PyObject *specs, *packers, *make;
    static char *kwlist[] = {"tests", "packers", "make", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O:Selector", kwlist, &specs, &PyDict_Type, &packers, &make))
        return NULL;
    PyObject *seq = PySequence_Fast(specs, "tests must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Selector *self = (Selector *)type->tp_alloc(type, 0);
    if (!self)
        goto fail;
    Py_INCREF(packers);
    self->packers = packers;
    Py_INCREF(make);
    self->make = make;
    self->tests = PyMem_Calloc(n ? n : 1, sizeof(Test));
    self->bits = PyMem_Calloc(n ? n : 1, sizeof(long));
    if (!self->tests || !self->bits) {
        PyErr_NoMemory();
        goto fail;
    }
    static const char *ops[] = {"set", "true", "eq", "len_eq", "len_ne"};
    for (Py_ssize_t i = 0; i < n; i++) {
        Test *t = &self->tests[i];
        PyObject *path, *op, *arg;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "lOUO", &self->bits[i], &path, &op, &arg))
            goto fail;
        if (path_init(&t->path, path) < 0)
            goto fail;
        self->ntests = (int)i + 1;
        t->op = -1;
        for (int k = 0; k < 5; k++)
            if (PyUnicode_CompareWithASCIIString(op, ops[k]) == 0)
                t->op = k;
        if (t->op < 0) {
            PyErr_Format(PyExc_ValueError, "unknown test %R", op);
            goto fail;
        }
        Py_INCREF(arg);
        t->arg = arg;
        if (t->op == OP_LEN_EQ || t->op == OP_LEN_NE) {
            t->len = PyLong_AsSsize_t(arg);
            if (t->len == -1 && PyErr_Occurred())
                goto fail;
        }
    }
    Py_DECREF(seq);
    return (PyObject *)self;
fail:
    Py_DECREF(seq);
    Py_XDECREF(self);
    return NULL;
}

static int
test_passes(Test *t, PyObject *record) /* 1, 0, or -1 on error */
{
    PyObject *v = path_get(&t->path, record);
    if (!v)
        return -1;
    int r;
    Py_ssize_t len;
    switch (t->op) {
    case OP_SET:
        r = v != Py_None;
        break;
    case OP_TRUE:
        r = PyObject_IsTrue(v);
        break;
    case OP_EQ:
        r = PyObject_RichCompareBool(v, t->arg, Py_EQ);
        break;
    default:
        len = PyObject_Length(v);
        r = len < 0 ? -1 : (t->op == OP_LEN_EQ) == (len == t->len);
    }
    Py_DECREF(v);
    return r;
}

static PyObject *
select_packer(Selector *self, PyObject *record) /* new reference */
{
    long mask = 0, failed = 0; /* failed: groups with a test that did not pass */
    for (int i = 0; i < self->ntests; i++) {
        if (failed & self->bits[i])
            continue;
        int r = test_passes(&self->tests[i], record);
        if (r < 0)
            return NULL;
        if (r)
            mask |= self->bits[i];
        else
            failed |= self->bits[i];
    }
    mask &= ~failed;
    PyObject *key = PyLong_FromLong(mask);
    if (!key)
        return NULL;
    PyObject *packer = PyDict_GetItemWithError(self->packers, key);
    if (packer) {
        Py_INCREF(packer);
    } else if (!PyErr_Occurred()) {
        packer = PyObject_CallOneArg(self->make, key);
    }
    Py_DECREF(key);
    return packer;
}

static PyObject *
Selector_call(Selector *self, PyObject *args, PyObject *kwds)
{
    PyObject *record;
    if (!PyArg_ParseTuple(args, "O:select", &record))
        return NULL;
    return select_packer(self, record);
}

static PyObject *str_codec, *str_pack, *str_packets, *str_octets;

static int
encode_one(Selector *self, PyObject *record, PyObject **columns) /* 0, or -1 on error */
{
    PyObject *packer = select_packer(self, record);
    if (!packer)
        return -1;
    PyObject *items[4] = {PyObject_GetAttr(packer, str_codec), NULL, PyObject_GetAttr(record, str_packets),
                          PyObject_GetAttr(record, str_octets)};
    PyObject *pack = PyObject_GetAttr(packer, str_pack);
    Py_DECREF(packer);
    if (pack) {
        items[1] = PyObject_CallOneArg(pack, record);
        Py_DECREF(pack);
    }
    int r = 0;
    for (int k = 0; k < 4; k++) {
        if (r == 0 && (!items[k] || PyList_Append(columns[k], items[k]) < 0))
            r = -1;
        Py_XDECREF(items[k]);
    }
    return r;
}

static PyObject *
Selector_encode(Selector *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* encode(records, start, type, codecs, data, packets, octets): appends each record's packer codec,
     * bytes, packets and octets from records[start] on while it is exactly of `type`; returns the index of
     * the first record that is not (or len(records)) */
    if (nargs != 7 || !PyList_Check(args[0]) || !PyType_Check(args[2]))
        return PyErr_Format(PyExc_TypeError, "encode(records: list, start, type, codecs, data, packets, octets)");
    PyObject *columns[4] = {args[3], args[4], args[5], args[6]};
    for (int k = 0; k < 4; k++)
        if (!PyList_Check(columns[k]))
            return PyErr_Format(PyExc_TypeError, "the columns are lists");
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    for (; i >= 0 && i < PyList_GET_SIZE(args[0]); i++) {
        PyObject *record = PyList_GET_ITEM(args[0], i);
        if (Py_TYPE(record) != (PyTypeObject *)args[2])
            break;
        Py_INCREF(record); /* the calls may run Python code */
        int r = encode_one(self, record, columns);
        Py_DECREF(record);
        if (r < 0)
            return NULL;
    }
    return PyLong_FromSsize_t(i);
}

static PyMethodDef Selector_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))Selector_encode, METH_FASTCALL,
     "encode(records, start, type, codecs, data, packets, octets) -> index of the first record not of type."},
    {NULL},
};

static PyTypeObject SelectorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "exporter._encode.Selector",
    .tp_basicsize = sizeof(Selector),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Selector(tests, packers, make): call it with a record for the packer of its template variant.",
    .tp_new = Selector_new,
    .tp_dealloc = (destructor)Selector_dealloc,
    .tp_call = (ternaryfunc)Selector_call,
    .tp_methods = Selector_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "exporter._encode", "Compiled record packers and variant selectors of the exporter.", -1,
};

PyMODINIT_FUNC
PyInit__encode(void)
{
    if (PyType_Ready(&PackerType) < 0 || PyType_Ready(&SelectorType) < 0)
        return NULL;
    if (!(str_codec = PyUnicode_InternFromString("codec")) || !(str_pack = PyUnicode_InternFromString("pack")) ||
        !(str_packets = PyUnicode_InternFromString("packets")) ||
        !(str_octets = PyUnicode_InternFromString("octets")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Packer", (PyObject *)&PackerType) < 0 ||
        PyModule_AddObjectRef(m, "Selector", (PyObject *)&SelectorType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
