/* Compiled per-frame fast path of agent.meter (Meter._walk_frames): the datagrams of established SAs
 * that need no tracker decision, for Ethernet (untagged, 802.1Q or QinQ) / IPv4 without options or
 * IPv6 without extension headers / unfragmented ESP or UDP 4500 (not the non-ESP marker): the next number (also the one that ends an SA's probation), a forward
 * jump that opens a gap inside the window, and either of them after gaps older than the reorder time
 * became final (SeqTracker.finalize_by_time) or final ranges behind the window were forgotten.
 * walk() consumes frames from `start` while each one is such a datagram and the next timer is not due,
 * updates the SA's fields exactly as agent.tracker does, and returns where it stopped: Python handles
 * that frame (tick, general decoder, the tracker) and calls again.
 *
 * The SA objects stay the source of truth: their fields (agent/sastate.h) are read and written in place,
 * the numbers unboxed, the tracker's lists and tuples as Python objects.  Floats are computed as Python does
 * (sec + usec * 1e-6 in double precision, no contraction; the build passes -ffp-contract=off).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <arpa/inet.h>

#include "sastate.h"

static PyObject *loss_run; /* agent.tracker.LossRun */
static long long probation_run; /* agent.sa.PROBATION_RUN */
static PyTypeObject *sa_type; /* agent.sa.SA: its instances are SAFields (sastate.h), with no field of its own */

#define CACHE_MIN_BITS 9 /* buckets */
#define CACHE_MAX_BITS 16
/* agent.sa.NO_LIMIT: above the highest number an SA may reach (agent.tracker.SEQ_LIMIT), and no fast limit
 * is above it, so a number beyond that limit is always the tracker's; far below 2^63, so that numbers,
 * a window and a 32-bit skip added to them never overflow */
static long long no_limit;

static inline uint32_t be16(const unsigned char *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* An exact int that fits in 63 bits (an item of the tracker's lists), else fail (the frame goes to Python). */
static inline int as_i64(PyObject *o, long long *v) {
    int overflow;
    if (o == NULL || !PyLong_CheckExact(o))
        return 0;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && !(*v == -1 && PyErr_Occurred());
}

/* An object field of an SA set to `value` (a new reference; NULL: an error is set, the field is unchanged). */
static inline int set_field(PyObject **field, PyObject *value) {
    if (value == NULL)
        return -1;
    PyObject *old = *field;
    *field = value;
    Py_XDECREF(old);
    return 0;
}

/* What the fast path needs of one frame's headers, or ok = 0 when Python must take the frame. */
static int cache_bits = CACHE_MIN_BITS;

typedef struct {
    int ok;
    int other;                  /* ok = 0 and agent.decode's class is "other": only counted (see is_other) */
    uint32_t total;             /* IP total length: the datagram's octets */
    const unsigned char *seq;   /* the ESP sequence number */
    uint64_t w0, w1;            /* IPv4: the SA ident (agent.sa: addresses [+ ports] + SPI), zero-padded to 16
                                 * octets; IPv6: a digest of it (a cache hit compares the ident itself) */
    Py_ssize_t ident_len;       /* 12 / 16: IPv4 ESP / ESP-in-UDP; 36 / 40: IPv6 */
    const unsigned char *addrs; /* IPv6: the source and destination addresses (and the ports) in the frame */
    const unsigned char *spi;   /* IPv6: the SPI in the frame */
    uint32_t vlans;             /* 0: untagged; else the VLAN IDs + 1, the outer in bits 0-12, the inner above */
    uint32_t idx;               /* its slot in the SA cache */
    uint32_t hit_gen;           /* cache_gen when `hit` was found (0: not looked up yet) */
    PyObject *hit;              /* the cache's SA for it then, or NULL (borrowed: valid while hit_gen is) */
    int32_t code;               /* its observation point, as the cache keys it (obs_code, tagged_obs) */
    PyObject *obs;              /* and as the table's key has it (borrowed: the walk's or tagged_obs's) */
    int out;                    /* Linux cooked captures: sent by this host (1) or not (0); else -1 */
    long long ifindex;          /* SLL2: the interface the header names; else -1 (the walk's obs) */
} Parsed;

/* The link layers the walk reads (agent.decode DLT_*) */
enum { DLT_EN10MB = 1, DLT_LINUX_SLL = 113, DLT_LINUX_SLL2 = 276 };
#define SLL_OUTGOING 4

/* The link header as agent.decode reads it: 0 when the frame is too short for it (truncated: Python's);
 * else *shift is where an Ethernet header would have to start for the network header to follow at
 * *shift + 14, and *ethertype the protocol field (SLL2 keeps it at the front, before its tag area). */
static inline int link_header(int linktype, const unsigned char *p, uint32_t caplen, Parsed *f, uint32_t *shift,
                              unsigned *ethertype) {
    f->out = -1;
    f->ifindex = -1;
    if (linktype == DLT_EN10MB) {
        if (caplen < 14)
            return 0;
        *shift = 0;
        *ethertype = be16(p + 12);
    } else if (linktype == DLT_LINUX_SLL) {
        if (caplen < 16)
            return 0;
        *shift = 2;
        *ethertype = be16(p + 14);
        f->out = be16(p) == SLL_OUTGOING;
    } else {
        if (caplen < 20)
            return 0;
        *shift = 6;
        *ethertype = be16(p);
        f->ifindex = be32(p + 4);
        f->out = p[10] == SLL_OUTGOING;
    }
    return 1;
}

static inline int is_tpid(unsigned ethertype) {
    return ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100;
}

/* Whether agent.decode classes this Ethernet frame "other" and Meter._frame only counts it: neither ESP
 * nor UDP on port 500 or 4500, nor an IP fragment (the fragment table may want it), nor truncated or
 * malformed. It keeps a mixed capture read without a BPF filter out of Python: the general decoder
 * took 5 us of CPU per such frame (20 % ESP: 10.5 s for 2 M frames, 0.5 s with --bpf). Any doubt is 0:
 * Python decides. The tests compare its class with the decoder's on every frame of the fuzzed inputs. */
static int is_other(const unsigned char *p, uint32_t caplen, unsigned ethertype) {
    uint32_t at = 12;
    for (int tags = 0; is_tpid(ethertype); tags++) {
        if (tags == 2)
            return 1; /* a third tag */
        if (caplen - at < 6)
            return 0;
        at += 4;
        ethertype = be16(p + at);
    }
    uint32_t ip = at + 2, avail = caplen - ip, start, limit, proto;
    if (ethertype == 0x0800) {
        if (avail < 20)
            return 0;
        uint32_t hlen = (p[ip] & 0x0F) * 4, total = be16(p + ip + 2);
        if (p[ip] >> 4 != 4 || hlen < 20 || total < hlen || avail < hlen || (be16(p + ip + 6) & 0x3FFF))
            return 0;
        proto = p[ip + 9];
        start = ip + hlen;
        limit = ip + total;
    } else if (ethertype == 0x86DD) {
        if (avail < 40 || p[ip] >> 4 != 6)
            return 0;
        proto = p[ip + 6];
        if (proto == 0 || proto == 43 || proto == 60 || proto == 44 || proto == 51)
            return 0; /* extension headers, a fragment, AH: Python walks them */
        start = ip + 40;
        limit = start + be16(p + ip + 4);
    } else
        return 1;
    if (proto == 50)
        return 0;
    if (proto != 17)
        return 1;
    uint32_t end = limit < caplen ? limit : caplen; /* as decode: the captured part of the IP packet */
    if (end < start + 8) /* a UDP header cut short by the IP length or by the capture */
        return 0;
    unsigned sport = be16(p + start), dport = be16(p + start + 2);
    return sport != 500 && dport != 500 && sport != 4500 && dport != 4500;
}

static inline void parsed(Parsed *f, uint32_t total) {
    uint64_t h = (f->w0 ^ (f->w1 * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)f->vlans << 40)) * 0xC2B2AE3D27D4EB4Full;
    f->idx = (uint32_t)(h >> (64 - cache_bits));
    f->total = total;
    f->ok = 1;
}

static inline uint64_t load64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Ethernet / IPv6 without extension headers / ESP or UDP 4500: the checks of the IPv4 case below, as
 * agent.decode makes them (the payload length in place of the total length). The 36- or 40-octet ident
 * stays in the frame; w0, w1 digest it for the cache (a hit compares the ident: ident_matches). */
static inline void parse_ipv6(Parsed *f, const unsigned char *p, uint32_t caplen) {
    if (caplen < 62 || p[14] >> 4 != 6)
        return;
    uint32_t payload = be16(p + 18);
    if (p[20] == 50) {
        if (payload < 8 || be32(p + 54) == 0)
            return;
        f->ident_len = 36;
        f->seq = p + 58;
    } else if (p[20] == 17) {
        if (caplen < 70 || payload < 16 || (be16(p + 54) != 4500 && be16(p + 56) != 4500))
            return;
        uint32_t ulen = be16(p + 58);
        if (ulen < 16 || ulen > payload || be32(p + 62) == 0)
            return;
        f->ident_len = 40;
        f->seq = p + 66;
    } else
        return;
    f->addrs = p + 22;
    f->spi = f->seq - 4;
    uint64_t k = 0x9E3779B97F4A7C15ull;
    f->w0 = (load64(p + 22) * k ^ load64(p + 30)) * 0xC2B2AE3D27D4EB4Full ^ be32(f->spi);
    uint64_t h = (load64(p + 38) * k ^ load64(p + 46)) * 0xD6E8FEB86659FD93ull ^ (uint64_t)be32(p + 54) << 32
        ^ (uint64_t)f->ident_len;
    /* An IPv4 frame's (w0, w1) is its ident, whose octets 8-11 are never all zero (ESP: the SPI, not 0;
     * ESP-in-UDP: the ports, one of them 4500) and whose hit is not compared: a digest keeps those octets
     * zero, so that no IPv6 SA is found for an IPv4 frame (the rest of h folded into the other four). */
    uint32_t folded = (uint32_t)(h ^ h >> 32);
    unsigned char w1[8] = {0};
    memcpy(w1 + 4, &folded, 4);
    memcpy(&f->w1, w1, 8);
    parsed(f, 40 + payload);
}

/* The ident bytes of a parsed frame, as agent.sa.esp_ident / udp_ident make them. */
static void ident_of(const Parsed *f, unsigned char *out) {
    if (f->ident_len <= 16) {
        memcpy(out, &f->w0, 8);
        memcpy(out + 8, &f->w1, 8);
        return;
    }
    memcpy(out, f->addrs, f->ident_len - 4); /* addresses [+ ports] */
    memcpy(out + f->ident_len - 4, f->spi, 4);
}

static inline void parse_esp(Parsed *f, const unsigned char *p, uint32_t caplen, unsigned ethertype) {
    /* up to two 802.1Q/802.1ad tags (agent.decode._vlan_tags; a third is "other"): the frame is read as if
     * untagged from 4 octets further on, the tags kept for the SA's observation point */
    for (int shift = 0; shift < 26 && caplen >= 18 && is_tpid(ethertype); shift += 13) {
        f->vlans |= ((be16(p + 14) & 0x0FFFu) + 1) << shift;
        p += 4;
        caplen -= 4;
        ethertype = be16(p + 12);
    }
    if (ethertype == 0x86DD) {
        parse_ipv6(f, p, caplen);
        return;
    }
    if (caplen < 42 || ethertype != 0x0800 || p[14] != 0x45 || (be16(p + 20) & 0x3FFF))
        return;
    uint32_t total = be16(p + 16);
    unsigned char ident[16];
    if (p[23] == 50) {
        if (total < 28 || be32(p + 34) == 0) /* as agent.decode: SPI 0 is reserved, malformed */
            return;
        memcpy(ident, p + 26, 12);
        memset(ident + 12, 0, 4); /* an ESP-in-UDP ident never ends in four zeros: SPI 0 is the marker */
        f->ident_len = 12;
        f->seq = p + 38;
    } else if (p[23] == 17) {
        /* as agent.decode: UDP length within the IP payload, at least 8 octets of ESP header after it,
         * a non-zero SPI (zero is the non-ESP marker: IKE) */
        if (caplen < 50 || total < 36 || (be16(p + 34) != 4500 && be16(p + 36) != 4500))
            return;
        uint32_t ulen = be16(p + 38);
        if (ulen < 16 || ulen > total - 20 || be32(p + 42) == 0)
            return;
        memcpy(ident, p + 26, 12);
        memcpy(ident + 12, p + 42, 4);
        f->ident_len = 16;
        f->seq = p + 46;
    } else {
        return;
    }
    memcpy(&f->w0, ident, 8);
    memcpy(&f->w1, ident + 8, 8);
    parsed(f, total);
}

static inline void parse(Parsed *f, const unsigned char *p, uint32_t caplen, int linktype) {
    uint32_t shift;
    unsigned ethertype;
    f->ok = f->other = 0;
    f->vlans = 0;
    if (!link_header(linktype, p, caplen, f, &shift, &ethertype))
        return;
    parse_esp(f, p + shift, caplen - shift, ethertype);
    f->other = !f->ok && is_other(p + shift, caplen - shift, ethertype);
}

/* ident -> SA for one obs, valid while the table has the same epoch (agent.satable: it changes on every
 * removal or replacement of an entry, and is unique across tables): a hit replaces the dict lookup
 * (its key tuple and bytes compare) by one cache line. New entries do not invalidate it, so a
 * concentrator adding an SA every few frames keeps its hits. Lossy (2-way buckets of one cache line,
 * about eight entries per SA, at most 2^16 buckets = 4 MiB): a miss just looks the dict up.
 * Borrowed SA pointers: the dict holds them while the epoch is unchanged. */
typedef struct {
    uint64_t w0, w1;
    uint32_t gen;
    int32_t obs;
    PyObject *sa;
} Entry;

typedef struct {
    Entry e[2]; /* most recently filled first */
} Bucket;

static Bucket *cache;
static uint32_t cache_gen = 1;
static unsigned long long cache_epoch;
static Py_ssize_t cache_size; /* table size when the cache was last sized */

/* obs as the cache keys it: -1 for None, the ifindex of (ifindex, None, None); -2: not cacheable */
static int32_t obs_code(PyObject *obs) {
    if (obs == Py_None)
        return -1;
    if (PyTuple_CheckExact(obs) && PyTuple_GET_SIZE(obs) == 3 && PyTuple_GET_ITEM(obs, 1) == Py_None
        && PyTuple_GET_ITEM(obs, 2) == Py_None && PyLong_CheckExact(PyTuple_GET_ITEM(obs, 0))) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(obs, 0));
        if (v >= 0 && v < INT32_MAX)
            return (int32_t)v;
        PyErr_Clear();
    }
    return -2;
}

/* The observation points of tagged frames, (ifindex, vlan, inner_vlan) as agent.decode.Frame.obs has
 * them, each made once and kept for the module's life: a slot's code is -3 - its index. Bounded: beyond
 * half of the slots a new one is not cacheable (-2), and Python takes its frames. */
#define TAGGED_BITS 14
#define TAGGED_SLOTS (1 << TAGGED_BITS)
typedef struct {
    int32_t base;   /* the walk's code: -1 (no ifindex) or the ifindex */
    uint32_t vlans; /* as Parsed.vlans */
    PyObject *obs;
} TaggedObs;
static TaggedObs tagged[TAGGED_SLOTS];
static int n_tagged;

static int32_t tagged_obs(int32_t base, uint32_t vlans, PyObject **out) {
    if (base == -2)
        return -2;
    uint32_t h = (uint32_t)(((uint64_t)(uint32_t)base * 0x9E3779B97F4A7C15ull ^ vlans) * 0xC2B2AE3D27D4EB4Full >> (64 - TAGGED_BITS));
    for (;; h = (h + 1) & (TAGGED_SLOTS - 1)) {
        TaggedObs *t = &tagged[h];
        if (t->obs == NULL)
            break;
        if (t->base == base && t->vlans == vlans) {
            *out = t->obs;
            return -3 - (int32_t)h;
        }
    }
    if (n_tagged >= TAGGED_SLOTS / 2)
        return -2;
    PyObject *ifindex = base == -1 ? Py_NewRef(Py_None) : PyLong_FromLong(base);
    PyObject *vlan = vlans ? PyLong_FromLong((long)(vlans & 0x1FFF) - 1) : Py_NewRef(Py_None);
    PyObject *inner = vlans >> 13 ? PyLong_FromLong((long)(vlans >> 13) - 1) : Py_NewRef(Py_None);
    PyObject *t = ifindex == NULL || vlan == NULL || inner == NULL ? NULL : PyTuple_Pack(3, ifindex, vlan, inner);
    Py_XDECREF(ifindex);
    Py_XDECREF(vlan);
    Py_XDECREF(inner);
    if (t == NULL) { /* out of memory: Python takes the frame (and meets the error itself) */
        PyErr_Clear();
        return -2;
    }
    tagged[h] = (TaggedObs){base, vlans, t};
    n_tagged++;
    *out = t;
    return -3 - (int32_t)h;
}

static PyObject *str_in, *str_out; /* agent.decode.Frame.direction of a cooked capture's frames */

/* f's direction from the walk's, as Meter._frame has it: the walk's unless None, then the cooked header's */
static inline PyObject *direction_of(const Parsed *f, PyObject *direction) {
    return direction != Py_None || f->out < 0 ? direction : f->out ? str_out : str_in;
}

/* f's observation point from the walk's (code, obs), as agent.decode.Frame.obs: SLL2's interface, not the
 * walk's. A tagged or SLL2 frame without a cacheable observation point is Python's. */
static inline void observe(Parsed *f, int32_t code, PyObject *obs) {
    f->code = code;
    f->obs = obs;
    if (!f->ok)
        return;
    if (f->ifindex >= 0)
        code = f->ifindex < INT32_MAX ? (int32_t)f->ifindex : -2;
    else if (!f->vlans)
        return;
    if ((f->code = tagged_obs(code, f->vlans, &f->obs)) == -2)
        f->ok = 0;
}

static inline Entry *find(const Parsed *f) {
    Bucket *b = &cache[f->idx];
    for (int k = 0; k < 2; k++) {
        Entry *e = &b->e[k];
        if (e->gen == cache_gen && e->obs == f->code && e->w0 == f->w0 && e->w1 == f->w1)
            return e;
    }
    return NULL;
}

/* An IPv6 cache hit is the SA's when its ident is the frame's (w0, w1 only digest it). */
static inline int ident_matches(PyObject *sa, const Parsed *f) {
    if (f->ident_len <= 16)
        return 1;
    Py_ssize_t n;
    const unsigned char *i = sa_ident(sa, &n);
    if (i == NULL)
        return 0; /* not a key the table makes: the dict decides */
    return n == f->ident_len && !memcmp(i, f->addrs, f->ident_len - 4) && !memcmp(i + f->ident_len - 4, f->spi, 4);
}

/* The SA of the parsed frame `f` (borrowed), or NULL: then `*miss` is its table key (owned) and `*hash`
 * that key's hash, for the create that follows (one key and one hash per new SA), or an error is set. */
static PyObject *lookup(PyObject *sas, const Parsed *f, PyObject **miss, Py_hash_t *hash) {
    int32_t code = f->code;
    PyObject *obs = f->obs;
    /* found ahead (cached_sa) and no entry gone stale since; not found then, it may be in the cache now */
    PyObject *hit = f->hit_gen == cache_gen ? f->hit : NULL;
    Entry *e = hit != NULL || code == -2 ? NULL : find(f);
    if (e != NULL)
        hit = e->sa;
    if (hit != NULL && ident_matches(hit, f))
        return hit;
    unsigned char raw[40 + SA_OBS_LEN]; /* the key, as agent.sakey makes it */
    ident_of(f, raw);
    int obs_len = sa_pack_obs(obs, raw + f->ident_len);
    PyObject *key = obs_len < 0 ? NULL : PyBytes_FromStringAndSize((const char *)raw, f->ident_len + obs_len);
    if (key == NULL)
        return NULL;
    Py_hash_t h = PyObject_Hash(key);
    PyObject *sa = h == -1 ? NULL : _PyDict_GetItem_KnownHash(sas, key, h); /* borrowed */
    if (sa == NULL || Py_TYPE(sa) != sa_type) {
        if (PyErr_Occurred())
            Py_DECREF(key);
        else {
            *miss = key;
            *hash = h;
        }
        return NULL;
    }
    Py_DECREF(key);
    if (code != -2) {
        Bucket *b = &cache[f->idx];
        b->e[1] = b->e[0];
        e = &b->e[0];
        e->w0 = f->w0;
        e->w1 = f->w1;
        e->gen = cache_gen;
        e->obs = code;
        e->sa = sa;
    }
    return sa;
}

/* Prefetch distances (frames ahead): headers and cache slot, then the SA's fields;
 * walking 2000 SAs is bound by memory latency, not by instructions. */
#define AHEAD_PARSE 12
#define AHEAD_SA 6
#define RING 16

/* The cache's SA for a frame ahead, kept in it for the later stages and for lookup(): one probe a frame.
 * An SA found stays the dict's while cache_gen is unchanged (a hit's key was in the dict, an entry leaving
 * it changes the epoch), and a frame not found is looked up by lookup() as before. */
static inline PyObject *cached_sa(Parsed *f) {
    Entry *e = f->ok ? find(f) : NULL; /* no entry has code -2 (lookup stores none) */
    f->hit = e != NULL ? e->sa : NULL;
    f->hit_gen = cache_gen;
    return f->hit;
}

/* The latest time at which a gap opened at t0 is not yet older than the reorder time: the largest t
 * with !(t - t0 > reorder_time), as the tracker tests it (agent.sa.horizon, the same steps). */
static double horizon(double t0, double reorder_time) {
    double t = t0 + reorder_time;
    while (t - t0 > reorder_time)
        t = nextafter(t, -INFINITY);
    while (nextafter(t, INFINITY) - t0 <= reorder_time)
        t = nextafter(t, INFINITY);
    return t;
}

/* The highest number of the SA's lowest final range (SeqTracker.finals): 1, 0 when it has none, -1 when
 * the field is not the tracker's (a list of [lo, hi]). */
static int lowest_final(PyObject *sa, long long *hi) {
    PyObject *finals = sa_finals(sa);
    if (finals != NULL && PyTuple_CheckExact(finals) && PyTuple_GET_SIZE(finals) == 0)
        return 0;
    if (finals == NULL || !PyList_CheckExact(finals))
        return -1;
    if (PyList_GET_SIZE(finals) == 0)
        return 0;
    PyObject *r = PyList_GET_ITEM(finals, 0);
    return PyList_CheckExact(r) && PyList_GET_SIZE(r) == 2 && as_i64(PyList_GET_ITEM(r, 1), hi) ? 1 : -1;
}

/* The fast limits (agent.sa.SA.fast_limits) of an established SA from its first gap and its lowest final
 * range, if any. */
static int set_limits(PyObject *sa, PyObject *gaps, long long window, double reorder_time) {
    long long hi;
    int final = lowest_final(sa, &hi);
    if (final < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "agent._fastpath: unexpected final range");
        return -1;
    }
    if (PyTuple_CheckExact(gaps) || PyList_GET_SIZE(gaps) == 0) { /* the shared empty tuple, or an emptied list */
        SA(sa)->fseq = final && hi + window < no_limit ? hi + window : no_limit;
        SA(sa)->ftime = INFINITY;
        return 0;
    }
    PyObject *g = PyList_GET_ITEM(gaps, 0);
    long long lo;
    if (!PyList_CheckExact(g) || PyList_GET_SIZE(g) != 6 || !as_i64(PyList_GET_ITEM(g, 0), &lo)
        || !PyFloat_CheckExact(PyList_GET_ITEM(g, 2))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "agent._fastpath: unexpected gap");
        return -1;
    }
    long long limit = (final && hi < lo ? hi : lo) + window;
    SA(sa)->fseq = limit < no_limit ? limit : no_limit;
    SA(sa)->ftime = horizon(PyFloat_AS_DOUBLE(PyList_GET_ITEM(g, 2)), reorder_time);
    return 0;
}

/* The second half of SeqTracker._behind_window on an established SA when the next number n puts a final
 * range behind the window (floor = n - window) and no gap: the ranges at or below floor are forgotten, and
 * the fast limits follow (they stop the fast paths at that number so that every path forgets them there).
 * 1 done; 0 Python must take the datagram (nothing to forget here, or a gap falls behind too); -1 error. */
static int trim_finals(PyObject *sa, long long floor, long long window, double reorder_time) {
    PyObject *gaps = sa_gaps(sa), *finals = sa_finals(sa);
    long long lo, hi;
    if (SA(sa)->trial || gaps == NULL || finals == NULL || !PyList_CheckExact(finals))
        return 0;
    if (PyList_CheckExact(gaps) && PyList_GET_SIZE(gaps) > 0) {
        PyObject *g = PyList_GET_ITEM(gaps, 0);
        if (!PyList_CheckExact(g) || PyList_GET_SIZE(g) != 6 || !as_i64(PyList_GET_ITEM(g, 0), &lo) || lo <= floor)
            return PyErr_Occurred() ? -1 : 0;
    } else if (!PyTuple_CheckExact(gaps) && !PyList_CheckExact(gaps))
        return 0;
    Py_ssize_t k = 0, n = PyList_GET_SIZE(finals);
    for (; k < n; k++) {
        PyObject *r = PyList_GET_ITEM(finals, k);
        if (!PyList_CheckExact(r) || PyList_GET_SIZE(r) != 2 || !as_i64(PyList_GET_ITEM(r, 1), &hi) || hi > floor)
            break;
    }
    if (PyErr_Occurred())
        return -1;
    if (k == 0)
        return 0;
    if (PyList_SetSlice(finals, 0, k, NULL) < 0)
        return -1;
    return set_limits(sa, gaps, window, reorder_time) < 0 ? -1 : 1;
}

/* List field `*field` with `item` appended; a shared empty tuple there becomes a new list. */
static int append_to(PyObject **field, PyObject *item) {
    PyObject *cur = *field;
    if (cur != NULL && PyList_CheckExact(cur))
        return PyList_Append(cur, item);
    PyObject *list = PyList_New(1);
    if (list == NULL)
        return -1;
    Py_INCREF(item);
    PyList_SET_ITEM(list, 0, item);
    return set_field(field, list);
}

/* SeqTracker.finalize_by_time on an established SA: the gaps older than the reorder time become
 * lost, each a loss event and a final range; then the fast limits follow the next gap. 1: done;
 * 0: Python must take the datagram; -1: error. */
static int finalize_by_time(PyObject *sa, double now, long long window, double reorder_time) {
    if (SA(sa)->trial)
        return 0;
    PyObject *gaps = sa_gaps(sa), *events = sa_events(sa), *finals = sa_finals(sa);
    long long lost = sa_lost(sa);
    if (gaps == NULL || !PyList_CheckExact(gaps) || PyList_GET_SIZE(gaps) == 0
        || events == NULL || finals == NULL || !(PyList_CheckExact(events) || PyTuple_CheckExact(events))
        || !(PyList_CheckExact(finals) || PyTuple_CheckExact(finals)))
        return 0;
    Py_ssize_t k = 0, n = PyList_GET_SIZE(gaps);
    for (; k < n; k++) {
        PyObject *g = PyList_GET_ITEM(gaps, k);
        long long lo, hi;
        if (!PyList_CheckExact(g) || PyList_GET_SIZE(g) != 6 || !PyFloat_CheckExact(PyList_GET_ITEM(g, 2)))
            break;
        if (!(now - PyFloat_AS_DOUBLE(PyList_GET_ITEM(g, 2)) > reorder_time))
            break;
        if (!as_i64(PyList_GET_ITEM(g, 0), &lo) || !as_i64(PyList_GET_ITEM(g, 1), &hi))
            break;
        lost += hi - lo + 1;
        PyObject *event = PyObject_CallFunctionObjArgs(loss_run, PyList_GET_ITEM(g, 5), PyList_GET_ITEM(g, 1),
                                                       PyList_GET_ITEM(g, 3), PyList_GET_ITEM(g, 4), NULL);
        if (event == NULL)
            return -1;
        SACold *cold = sa_cold(sa); /* allocated already: the gaps are there */
        int rc = cold == NULL ? -1 : append_to(&cold->events, event);
        Py_DECREF(event);
        PyObject *range = PyList_New(2);
        if (rc < 0 || range == NULL) {
            Py_XDECREF(range);
            return -1;
        }
        Py_INCREF(PyList_GET_ITEM(g, 0));
        Py_INCREF(PyList_GET_ITEM(g, 1));
        PyList_SET_ITEM(range, 0, PyList_GET_ITEM(g, 0));
        PyList_SET_ITEM(range, 1, PyList_GET_ITEM(g, 1));
        rc = append_to(&cold->finals, range);
        Py_DECREF(range);
        if (rc < 0)
            return -1;
    }
    if (PyErr_Occurred())
        return -1;
    if (k == 0)
        return 0;
    if (PyList_SetSlice(gaps, 0, k, NULL) < 0)
        return -1;
    SA(sa)->cold->lost = lost; /* the block is there: the gaps are */
    return set_limits(sa, gaps, window, reorder_time) < 0 ? -1 : 1;
}

/* A forward jump on an established SA: what SeqTracker._advance does when the new gap stays inside
 * the window and no older gap falls behind it (n < the first gap's lo + window): the gap
 * [last + 1, n - 1] opens, with its arrival times (the time of `last`: the anchor's when it pins
 * `last`, else last_seen), and the fast limits follow the first gap. 1: done; 0: Python must take
 * the datagram (probation, an unexpected type, the window); -1: error. */
static int open_gap(PyObject *sa, long long last, long long n, double now, long long window,
                    double reorder_time) {
    if (SA(sa)->trial)
        return 0;
    PyObject *gaps = sa_gaps(sa), *anchor = sa_anchor(sa), *anchored = NULL;
    long long lo0, a0;
    double arrival;
    if (gaps == NULL)
        return 0;
    int empty = (PyTuple_CheckExact(gaps) && PyTuple_GET_SIZE(gaps) == 0)
        || (PyList_CheckExact(gaps) && PyList_GET_SIZE(gaps) == 0);
    if (empty)
        lo0 = last + 1;
    else if (!PyList_CheckExact(gaps) || PyList_GET_SIZE(gaps) == 0 || !PyList_CheckExact(PyList_GET_ITEM(gaps, 0))
             || PyList_GET_SIZE(PyList_GET_ITEM(gaps, 0)) != 6
             || !as_i64(PyList_GET_ITEM(PyList_GET_ITEM(gaps, 0), 0), &lo0))
        return PyErr_Occurred() ? -1 : 0;
    if (!(n < lo0 + window))
        return 0;
    if (anchor == NULL || !PyTuple_CheckExact(anchor))
        return 0;
    if (PyTuple_GET_SIZE(anchor) == 2 && as_i64(PyTuple_GET_ITEM(anchor, 0), &a0) && a0 == last) {
        anchored = PyTuple_GET_ITEM(anchor, 1);
        if (!PyFloat_CheckExact(anchored))
            return 0;
        arrival = PyFloat_AS_DOUBLE(anchored);
    } else if (PyErr_Occurred())
        return -1;
    else if (PyTuple_GET_SIZE(anchor) == 2 || PyTuple_GET_SIZE(anchor) == 0)
        arrival = SA(sa)->last_seen;
    else
        return 0;
    /* one float for `now` and the anchor's own float, shared as the tracker shares them */
    PyObject *now_obj = PyFloat_FromDouble(now), *at = anchored != NULL ? Py_NewRef(anchored) : PyFloat_FromDouble(arrival);
    PyObject *gap = now_obj == NULL || at == NULL ? NULL
        : Py_BuildValue("[LLOOOL]", last + 1, n - 1, now_obj, at, now_obj, last + 1);
    Py_XDECREF(now_obj);
    Py_XDECREF(at);
    if (gap == NULL)
        return -1;
    SACold *cold = sa_cold(sa);
    int rc = cold == NULL ? -1 : append_to(&cold->gaps, gap);
    Py_DECREF(gap);
    if (rc < 0 || (empty && set_limits(sa, cold->gaps, window, reorder_time) < 0))
        return -1;
    return 1;
}

/* Whether the next number ends the probation of a trial SA (SATable.observe_slow: PROBATION_RUN accepted
 * datagrams) with nothing else for the tracker to do: no gap falls behind the window. */
static int ends_trial(PyObject *sa, long long last, long long window) {
    long long lo0;
    if (!SA(sa)->trial || SA(sa)->datagrams + 1 - sa_duplicates(sa) - sa_late(sa) != probation_run)
        return 0;
    PyObject *gaps = sa_gaps(sa);
    long long hi;
    int final = lowest_final(sa, &hi);
    if (gaps == NULL || final < 0 || (final && !(last + 1 < hi + window))) /* a final range to forget: Python */
        return 0;
    if (PyTuple_CheckExact(gaps) || (PyList_CheckExact(gaps) && PyList_GET_SIZE(gaps) == 0))
        return 1;
    if (!PyList_CheckExact(gaps) || !PyList_CheckExact(PyList_GET_ITEM(gaps, 0))
        || PyList_GET_SIZE(PyList_GET_ITEM(gaps, 0)) != 6
        || !as_i64(PyList_GET_ITEM(PyList_GET_ITEM(gaps, 0), 0), &lo0))
        return 0;
    return last + 1 < lo0 + window;
}

/* The first datagram of an SA the table has just created (no datagram yet, on probation): what
 * Meter._esp_datagram does with it, through SeqTracker.observe (_start: the number is first and last)
 * and SATable.observe_slow (still on trial: SA.fast_limits up to the datagram that ends probation).
 * 1 taken, 0 left to Python. */
static int first_datagram(PyObject *sa, uint32_t n, uint32_t total, double now) {
    SAFields *s = SA(sa);
    PyObject *gaps = sa_gaps(sa);
    if (Py_TYPE(sa) != sa_type || !s->active || !s->trial || probation_run < 2 || s->datagrams != 0
        || sa_duplicates(sa) != 0 || sa_late(sa) != 0 || sa_held(sa) != -1 || gaps == NULL || !PyTuple_CheckExact(gaps)
        || PyTuple_GET_SIZE(gaps) != 0)
        return 0;
    s->first = s->last = s->iv_min = n;
    s->ftime = INFINITY;
    if (s->iv_seen < 0)
        s->iv_seen = now;
    s->started = s->last_seen = now;
    s->datagrams = 1;
    s->packets += 1;
    s->octets += total;
    s->fseq = (long long)n + probation_run - 1;
    return 1;
}

/* What the create path reads of its table, once per walk() or create() call: "New SAs" below */
typedef struct {
    PyObject *table; /* borrowed from the caller, for its call; NULL before the call's first new SA */
    int loaded, dirty;
    PyObject *settings, *sas, *probation, *dormant, *schedule, *pairer, *authority, *unpaired, *epochs, *dropped,
        *epoch;
    double idle, active;
    Py_ssize_t max_sas;
    long long stale, stale_min, stale_share;
    long long evictions, unconfirmed_sas, unconfirmed_datagrams;
} Ctx;
static Ctx *walk_ctx; /* the Ctx of the walk() under way (walk_call) */
/* walk() calls begun (walk_call): a walk sees from it that Python code its create ran walked too, which
 * left the SA cache (and its size) to that walk's table */
static unsigned long long walks;
static int ctx_enter(Ctx *c);
static PyObject *create_sa(Ctx *c, PyObject *key, Py_hash_t hash, PyObject *udp, PyObject *now,
                           PyObject *direction, PyObject *local); /* SATable.create */
/* agent.schedule's compiled heap: "The export schedule" below */
typedef struct { double due; PyObject *sa; } Timer;
typedef struct { PyObject_HEAD Timer *t; Py_ssize_t n, cap; } Schedule;
static PyTypeObject ScheduleType;
static int schedule_push(Schedule *s, double due, PyObject *sa);
static PyObject *str_epoch, *str_schedule;

/* The cache after the table's epoch changed (an entry left it): every entry is stale. */
static void new_cache_epoch(unsigned long long epoch) {
    if (++cache_gen == 0) { /* wrapped: no stale entry may look current (none when a nested walk failed to
                             * allocate the cache) */
        if (cache != NULL)
            memset(cache, 0, sizeof(Bucket) << cache_bits);
        cache_gen = 1;
    }
    cache_epoch = epoch;
}

/* A new SA for the parsed frame `f`, created (SATable.create) and given its first datagram, as
 * Meter._create and Meter._esp_datagram would; `*epoch` and `*due` follow the table (a full table
 * drops an SA to make room; the new SA is scheduled). Returns the SA (borrowed from the table) when
 * its first datagram is still to be taken by Python, Py_None when it was taken here, NULL on error. */
static PyObject *new_sa_datagram(PyObject *table, PyObject *sas, const Parsed *f, PyObject *key, Py_hash_t hash,
                                 double now, PyObject *direction, PyObject *local_addrs, unsigned long long *epoch,
                                 double *due) {
    Ctx *c = walk_ctx;
    if (c == NULL) {
        PyErr_SetString(PyExc_SystemError, "new_sa_datagram outside walk_call");
        return NULL;
    }
    c->table = table; /* walk()'s, for the whole call */
    unsigned char raw[40];
    ident_of(f, raw);
    PyObject *now_obj = NULL, *sa = NULL, *result = NULL, *local = Py_False, *src = NULL;
    if ((now_obj = PyFloat_FromDouble(now)) == NULL)
        goto done;
    if (PyAnySet_Check(local_addrs) && PySet_GET_SIZE(local_addrs) > 0) { /* src in Meter.local_addrs */
        src = PyBytes_FromStringAndSize((const char *)raw, f->ident_len <= 16 ? 4 : 16);
        int in = src == NULL ? -1 : PySet_Contains(local_addrs, src);
        if (in < 0)
            goto done;
        local = in ? Py_True : Py_False;
    }
    if ((sa = create_sa(c, key, hash, f->ident_len == 16 || f->ident_len == 40 ? Py_True : Py_False, now_obj,
                        direction_of(f, direction),
                        local)) == NULL)
        goto done;
    int rc = first_datagram(sa, be32(f->seq), f->total, now);
    if (ctx_enter(c) < 0)
        goto done;
    unsigned long long now_epoch = PyLong_AsUnsignedLongLong(c->epoch);
    if (now_epoch == (unsigned long long)-1 && PyErr_Occurred())
        goto done;
    if (now_epoch != *epoch)
        new_cache_epoch(*epoch = now_epoch);
    /* Meter._due: the head of the schedule (another kind of schedule: stop at once, Python looks) */
    if (Py_IS_TYPE(c->schedule, &ScheduleType))
        *due = ((Schedule *)c->schedule)->n > 0 ? ((Schedule *)c->schedule)->t[0].due : INFINITY;
    else
        *due = -INFINITY;
    result = rc ? Py_None : _PyDict_GetItem_KnownHash(sas, key, hash);
    if (result == NULL && !PyErr_Occurred())
        result = Py_None; /* not in the table any more: nothing for Python to take */
done:
    Py_XDECREF(now_obj);
    Py_XDECREF(sa);
    Py_XDECREF(src);
    return result;
}

static PyObject *walk(PyObject *self, PyObject *args) {
    Py_buffer buf, meta;
    Py_ssize_t start;
    PyObject *sas, *obs;
    double due;
    unsigned long long epoch;
    long long window, jump_limit;
    double reorder_time;
    PyObject *probation, *table, *direction, *local_addrs;
    int linktype;
    if (!PyArg_ParseTuple(args, "y*y*inO!OdKLLdOOOO", &buf, &meta, &linktype, &start, &PyDict_Type, &sas, &obs, &due,
                          &epoch, &window, &jump_limit, &reorder_time, &probation, &table, &direction, &local_addrs))
        return NULL;
    if (linktype != DLT_EN10MB && linktype != DLT_LINUX_SLL && linktype != DLT_LINUX_SLL2) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&meta);
        PyErr_Format(PyExc_ValueError, "walk: link type %d is not Ethernet, SLL or SLL2", linktype);
        return NULL;
    }
    const unsigned char *b = buf.buf;
    const unsigned char *m = meta.buf;
    Py_ssize_t n = meta.len / 16, i = start < 0 ? 0 : start;
    unsigned long long octets = 0;
    Py_ssize_t others = 0; /* frames of class "other" taken here (see is_other) */
    PyObject *stop_sa = Py_None; /* the SA of the frame where the walk stopped, when it is one */
    unsigned long long mine = walks; /* this walk's number (walk_call) */
    uint32_t stop_seq = 0, stop_total = 0;
    int32_t code = obs_code(obs);
    Py_ssize_t size = PyDict_GET_SIZE(sas);
    if (cache == NULL || epoch != cache_epoch || size > 2 * cache_size) {
        /* an entry left the table (or it is another table, or it doubled): resize to the table, and
         * every entry is stale */
        int bits = CACHE_MIN_BITS;
        while (bits < CACHE_MAX_BITS && ((Py_ssize_t)1 << bits) < 4 * size)
            bits++;
        if (cache == NULL || bits > cache_bits || bits + 2 < cache_bits) {
            free(cache);
            cache = aligned_alloc(64, sizeof(Bucket) << bits);
            if (cache != NULL)
                memset(cache, 0, sizeof(Bucket) << bits);
            else {
                PyErr_NoMemory();
                goto error;
            }
            cache_bits = bits;
            cache_epoch = epoch;
        } else
            new_cache_epoch(epoch);
        cache_size = size > 64 ? size : 64;
    }
    Parsed ring[RING];
    for (Py_ssize_t j = i; j < n && j < i + AHEAD_PARSE; j++) {
        uint32_t r[4];
        memcpy(r, m + 16 * j, 16);
        Parsed *f = &ring[j % RING];
        f->ok = f->other = 0;
        f->hit_gen = 0;
        if ((Py_ssize_t)r[2] + r[3] <= buf.len) {
            parse(f, b + r[2], r[3], linktype);
            observe(f, code, obs);
        }
    }
    for (; i < n; i++) {
        Py_ssize_t j = i + AHEAD_PARSE;
        if (j < n) {
            uint32_t r[4];
            memcpy(r, m + 16 * j, 16);
            Parsed *f = &ring[j % RING];
            f->ok = f->other = 0;
            f->hit_gen = 0;
            if ((Py_ssize_t)r[2] + r[3] <= buf.len) {
                __builtin_prefetch(b + r[2] + 64);
                parse(f, b + r[2], r[3], linktype);
                observe(f, code, obs);
                if (f->ok)
                    __builtin_prefetch(&cache[f->idx]);
            }
        }
        if (i + AHEAD_SA < n) {
            PyObject *sa = cached_sa(&ring[(i + AHEAD_SA) % RING]);
            if (sa != NULL) { /* the fields every datagram touches: two cache lines (agent/sastate.h) */
                __builtin_prefetch(&SA(sa)->last);
                __builtin_prefetch(&SA(sa)->iv_seen);
            }
        }
        uint32_t r[4];
        memcpy(r, m + 16 * i, 16);
        double now = (double)r[0] + (double)r[1] * 1e-6;
        const Parsed *f = &ring[i % RING];
        if (now >= due)
            break;
        if (!f->ok) {
            if (!f->other)
                break;
            others++;
            octets += r[3];
            continue;
        }
        PyObject *key = NULL;
        Py_hash_t hash = -1;
        PyObject *sa = lookup(sas, f, &key, &hash);
        if (sa == NULL) {
            if (PyErr_Occurred())
                goto error;
            /* a new SA, and its first datagram */
            PyObject *left = new_sa_datagram(table, sas, f, key, hash, now, direction, local_addrs, &epoch, &due);
            Py_DECREF(key);
            if (left == NULL)
                goto error;
            /* Python code of the create walked (another table): the cache holds that table's SAs, the frames
             * ahead were parsed for its size. Every entry stale, and this walk stops after the frame. */
            int nested = walks != mine;
            if (nested)
                new_cache_epoch(epoch);
            if (left != Py_None) { /* its first datagram is Python's */
                stop_sa = left;
                stop_seq = be32(f->seq);
                stop_total = f->total;
                break;
            }
            octets += r[3];
            if (nested) {
                i++;
                break;
            }
            continue;
        }
        stop_sa = sa;
        stop_seq = be32(f->seq);
        stop_total = f->total;
        SAFields *st = SA(sa);
        long long last = st->last;
        if (last < -1 || st->fseq < 0) /* no fast path for this SA (see SA.fast_limits) */
            break;
        if (!(now <= st->ftime)) { /* a gap passed the reorder time: it becomes final first */
            int rc = finalize_by_time(sa, now, window, reorder_time);
            if (rc < 0)
                goto error;
            if (rc == 0 || !(now <= st->ftime))
                break;
        }
        /* n = last + 1 + skip: the nearest 64-bit number to `last` (agent.tracker.infer_esn) when the
         * skip is below 2^31; a jump past jump_limit is held, by Python */
        uint32_t skip = be32(f->seq) - (uint32_t)(last + 1);
        if (skip != 0 && (skip >= 0x80000000u || (long long)skip + 1 > jump_limit))
            break;
        if (!(last + 1 + skip < st->fseq)) {
            /* a final range falls behind the window at this number: forgotten first, as the tracker does */
            if (trim_finals(sa, last + 1 + skip - window, window, reorder_time) < 0)
                goto error;
        }
        int trial_ends = 0;
        if (!(last + 1 < st->fseq)) {
            if (skip != 0 || last + 1 != st->fseq || !(trial_ends = ends_trial(sa, last, window))) {
                if (PyErr_Occurred())
                    goto error;
                break;
            }
        }
        if (skip != 0) {
            int rc = open_gap(sa, last, last + 1 + skip, now, window, reorder_time);
            if (rc < 0)
                goto error;
            if (rc == 0)
                break;
        }
        st->last = last + 1 + skip;
        st->datagrams++;
        st->packets++;
        st->octets += f->total;
        st->last_seen = now;
        if (st->iv_min < 0) {
            st->iv_min = st->last;
            if (st->iv_seen < 0) /* the interval's first accepted number: maybe its first arrival */
                st->iv_seen = now;
        }
        if (trial_ends) { /* established: off probation, and the limits of an established SA */
            st->trial = 0;
            if (PyObject_DelItem(probation, st->key) < 0) {
                if (!PyErr_ExceptionMatches(PyExc_KeyError))
                    goto error;
                PyErr_Clear();
            }
            if (set_limits(sa, sa_gaps(sa), window, reorder_time) < 0)
                goto error;
        }
        octets += r[3];
        stop_sa = Py_None;
    }
    PyBuffer_Release(&buf);
    PyBuffer_Release(&meta);
    return Py_BuildValue("nKOIIn", i, octets, stop_sa, stop_seq, stop_total, others);
error:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&meta);
    return NULL;
}

/* ---- `read --json` entries (agent.report) ------------------------------------------------------
 * sa_entries() and tunnel_entries() write the `sas[]` and `tunnels[]` entries of a list, joined by
 * commas, exactly as agent.report's compiled f-strings write `sa_values(...)` and `tunnel_values(...)`
 * (the Python writers: the fallback, and the oracle of tests/test_read_json.py).  An entry with a value
 * this writer does not handle (an int beyond 63 bits, a configured tunnel name, an IPv4-embedded IPv6
 * address, a field not set...) is written by the Python function `slow(item)` instead.
 * Each put_* returns 1 (written), 0 (not handled here: `slow` writes the entry) or -1 (error).
 */
static PyObject *encode_str; /* json.encoder.encode_basestring_ascii */
#define PUT(expr)          \
    do {                   \
        int r_ = (expr);   \
        if (r_ <= 0)       \
            return r_;     \
    } while (0)

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Text;

static int put(Text *t, const char *s, Py_ssize_t n) {
    if (t->len + n > t->cap) {
        Py_ssize_t cap = t->cap ? t->cap : 1 << 16;
        while (cap < t->len + n) {
            if (cap > PY_SSIZE_T_MAX / 2) {
                PyErr_NoMemory();
                return -1;
            }
            cap *= 2;
        }
        char *p = PyMem_Realloc(t->p, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    return 1;
}

#define PUTS(t, s) put(t, s, (Py_ssize_t)strlen(s))

/* a decimal as str(int) writes it (snprintf was a third of the writer's time) */
static int put_i64(Text *t, long long v) {
    char s[24], *e = s + sizeof s, *p = e;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do
        *--p = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        *--p = '-';
    return put(t, p, e - p);
}

/* a literal, then a decimal */
static int put_named(Text *t, const char *name, long long v) {
    PUT(PUTS(t, name));
    return put_i64(t, v);
}

static int put_int(Text *t, PyObject *o) {
    long long v;
    if (!as_i64(o, &v))
        return PyErr_Occurred() ? -1 : 0;
    return put_i64(t, v);
}

static int put_int_or_null(Text *t, PyObject *o) {
    return o == Py_None ? PUTS(t, "null") : put_int(t, o);
}

/* a str as json.dumps writes it */
static int put_str(Text *t, PyObject *o) {
    if (o == NULL || !PyUnicode_CheckExact(o))
        return 0;
    PyObject *q = PyObject_CallOneArg(encode_str, o);
    if (q == NULL)
        return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(q, &n);
    int r = s == NULL ? -1 : put(t, s, n);
    Py_DECREF(q);
    return r;
}

static int put_str_or_null(Text *t, PyObject *o) {
    return o == Py_None ? PUTS(t, "null") : put_str(t, o);
}

/* repr(round(x, 6)).  A time of a capture, 1 <= x < 2^33 (ulp below 1e-6), is x = m / 1e6 for the
 * nearest integer m of x * 1e6 when it has six decimals: that decimal is then the only one of at most
 * six that reads back as x (any other is 1e-6 away, more than an ulp), so it is repr(x), and x is
 * round(x, 6).  Else as round() and repr() compute it: the correctly rounded 6-decimal text, read
 * back, and its shortest repr (dtoa: most of the writer's time when every time went this way). */
static int put_time(Text *t, double x) {
    if (!isfinite(x))
        return 0;
    if (x >= 1.0 && x < 8589934592.0) {
        long long m = llround(x * 1e6);
        if ((double)m / 1e6 == x) {
            char s[32], *e = s + sizeof s, *p = e;
            long long frac = m % 1000000;
            int digits = 6;
            while (digits > 1 && frac % 10 == 0) { /* repr: no trailing zeros, but one digit after the dot */
                frac /= 10;
                digits--;
            }
            for (int i = 0; i < digits; i++, frac /= 10)
                *--p = (char)('0' + frac % 10);
            *--p = '.';
            long long whole = m / 1000000;
            do
                *--p = (char)('0' + whole % 10);
            while (whole /= 10);
            return put(t, p, e - p);
        }
    }
    char *fixed = PyOS_double_to_string(x, 'f', 6, 0, NULL);
    if (fixed == NULL)
        return -1;
    double r = PyOS_string_to_double(fixed, NULL, NULL);
    PyMem_Free(fixed);
    if (r == -1.0 && PyErr_Occurred())
        return -1;
    char *s = PyOS_double_to_string(r, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL)
        return -1;
    int ok = PUTS(t, s);
    PyMem_Free(s);
    return ok;
}

/* an ident's address length (agent.sa.SA.addr_len) */
static inline int addr_len(Py_ssize_t ident_len) { return ident_len == 12 || ident_len == 16 ? 4 : 16; }

/* an address as agent.sa.address_text writes it, quoted; IPv4 by hand (glibc's inet_ntop formats it
 * with sprintf) */
static int put_address(Text *t, const unsigned char *a, int n) {
    char s[INET6_ADDRSTRLEN + 2];
    static const unsigned char zeros[10];
    if (n == 4) {
        char *p = s;
        *p++ = '"';
        for (int i = 0; i < 4; i++) {
            unsigned v = a[i];
            if (v >= 100)
                *p++ = (char)('0' + v / 100);
            if (v >= 10)
                *p++ = (char)('0' + v / 10 % 10);
            *p++ = (char)('0' + v % 10);
            *p++ = i < 3 ? '.' : '"';
        }
        return put(t, s, p - s);
    }
    if (memcmp(a, zeros, 10) == 0) /* inet_ntop and ipaddress differ here (agent.sa.address_text) */
        return 0;
    s[0] = '"';
    if (inet_ntop(AF_INET6, a, s + 1, INET6_ADDRSTRLEN) == NULL)
        return 0;
    size_t len = strlen(s);
    s[len] = '"';
    return put(t, s, (Py_ssize_t)len + 1);
}

/* one `sas[]` entry, in agent.report.SA_FIELDS order */
static int put_sa(Text *t, PyObject *sa, PyObject *names, PyObject *interfaces) {
    if (Py_TYPE(sa) != sa_type)
        return 0;
    SAFields *st = SA(sa);
    long long ifindex = -1;
    int vlan = -1, inner = -1;
    if (sa_obs(sa, &ifindex, &vlan, &inner) < 0)
        return 0;
    PyObject *iface = NULL; /* interfaces.get(ifindex, ifindex) if interfaces else ifindex: NULL for the number */
    if (interfaces != Py_None && PyDict_GET_SIZE(interfaces)) {
        if (ifindex < 0) /* None, looked up by Python */
            return 0;
        PyObject *number = PyLong_FromLongLong(ifindex); /* an exact int: no Python code runs in the look-up */
        iface = number == NULL ? NULL : PyDict_GetItemWithError(interfaces, number);
        Py_XDECREF(number);
        if (iface == NULL && PyErr_Occurred())
            return -1;
    }
    PyObject *peer = st->peer, *name = sa_name(sa);
    Py_ssize_t len, peer_len = 0;
    const unsigned char *id = sa_ident(sa, &len), *pid = NULL;
    if (id == NULL)
        return 0;
    int n = addr_len(len);
    if (len != (st->udp ? 2 * n + 8 : 2 * n + 4))
        return 0;
    if (name == NULL || (name == Py_None && PyDict_GET_SIZE(names))) /* a configured name: tunnel_name() */
        return 0;
    long long f = st->first, l = st->last;
    if (l >= 0 && (f < 0 || l - f == LLONG_MAX))
        return 0;
    if (peer == NULL || (peer != Py_None && (Py_TYPE(peer) != sa_type || (pid = sa_ident(peer, &peer_len)) == NULL)))
        return 0;
    PUT(PUTS(t, "{\"src\":"));
    PUT(put_address(t, id, n));
    PUT(PUTS(t, ",\"dst\":"));
    PUT(put_address(t, id + n, n));
    PUT(put_named(t, ",\"spi\":", be32(id + len - 4)));
    if (st->udp) {
        PUT(put_named(t, ",\"encap\":\"udp\",\"sport\":", be16(id + 2 * n)));
        PUT(put_named(t, ",\"dport\":", be16(id + 2 * n + 2)));
    } else {
        PUT(PUTS(t, ",\"encap\":\"esp\",\"sport\":null,\"dport\":null"));
    }
    PUT(PUTS(t, ",\"vlan\":"));
    PUT(vlan < 0 ? PUTS(t, "null") : put_i64(t, vlan));
    PUT(PUTS(t, ",\"inner_vlan\":"));
    PUT(inner < 0 ? PUTS(t, "null") : put_i64(t, inner));
    PUT(PUTS(t, ",\"interface\":"));
    PUT(iface == NULL ? (ifindex < 0 ? PUTS(t, "null") : put_i64(t, ifindex))
        : PyUnicode_CheckExact(iface) ? put_str(t, iface) : put_int_or_null(t, iface));
    PUT(PUTS(t, ",\"direction\":"));
    PUT(PUTS(t, st->direction == SA_IN ? "\"in\"" : st->direction == SA_OUT ? "\"out\"" : "null"));
    PUT(PUTS(t, st->local ? ",\"local\":true" : ",\"local\":false"));
    PUT(put_named(t, ",\"generation\":", sa_generation(sa)));
    PUT(put_named(t, ",\"packets\":", st->packets));
    PUT(put_named(t, ",\"octets\":", st->octets));
    PUT(put_named(t, ",\"datagrams\":", st->datagrams));
    if (l >= 0) {
        PUT(put_named(t, ",\"first_seq\":", f));
        PUT(put_named(t, ",\"last_seq\":", l));
    } else {
        PUT(PUTS(t, ",\"first_seq\":null,\"last_seq\":null"));
    }
    PUT(put_named(t, ",\"expected\":", l >= 0 ? l - f + 1 : 0));
    PUT(put_named(t, ",\"lost\":", sa_lost(sa)));
    PUT(put_named(t, ",\"reordered\":", sa_reordered(sa)));
    PUT(put_named(t, ",\"max_reorder_extent\":", sa_max_extent(sa)));
    PUT(put_named(t, ",\"duplicates\":", sa_duplicates(sa)));
    PUT(put_named(t, ",\"late\":", sa_late(sa)));
    PUT(put_named(t, ",\"implausible\":", sa_implausible(sa)));
    PUT(put_named(t, ",\"incomplete\":", sa_incomplete(sa)));
    if (peer != Py_None) {
        PUT(put_named(t, ",\"peer_spi\":", be32(pid + peer_len - 4)));
    } else {
        PUT(PUTS(t, ",\"peer_spi\":null"));
    }
    PUT(PUTS(t, ",\"tunnel\":"));
    PUT(st->tunnel_id < 0 ? PUTS(t, "null") : put_i64(t, st->tunnel_id));
    PUT(PUTS(t, ",\"tunnel_name\":"));
    PUT(put_str_or_null(t, name));
    PUT(PUTS(t, ",\"first_seen\":"));
    PUT(put_time(t, st->first_seen));
    PUT(PUTS(t, ",\"last_seen\":"));
    PUT(put_time(t, st->last_seen));
    return PUTS(t, "}");
}

/* one `tunnels[]` entry (agent.report.TUNNEL_FIELDS) of (id, forward SA, reverse SA, their indexes) */
static int put_tunnel(Text *t, PyObject *item, PyObject *names, PyObject *unused) {
    (void)unused;
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 5)
        return 0;
    PyObject *fwd = PyTuple_GET_ITEM(item, 1), *rev = PyTuple_GET_ITEM(item, 2);
    if (Py_TYPE(fwd) != sa_type || Py_TYPE(rev) != sa_type)
        return 0;
    PyObject *name = sa_name(fwd);
    Py_ssize_t len, rlen;
    const unsigned char *id = sa_ident(fwd, &len), *rid = sa_ident(rev, &rlen);
    if (id == NULL || rid == NULL || name == NULL || (name == Py_None && PyDict_GET_SIZE(names)))
        return 0;
    int n = addr_len(len);
    rid += rlen - 4;
    PUT(PUTS(t, "{\"id\":"));
    PUT(put_int(t, PyTuple_GET_ITEM(item, 0)));
    PUT(PUTS(t, ",\"name\":"));
    PUT(put_str_or_null(t, name));
    PUT(PUTS(t, ",\"a\":"));
    PUT(put_address(t, id, n));
    PUT(PUTS(t, ",\"b\":"));
    PUT(put_address(t, id + n, n));
    PUT(PUTS(t, ",\"sas\":["));
    PUT(put_int(t, PyTuple_GET_ITEM(item, 3)));
    PUT(PUTS(t, ","));
    PUT(put_int(t, PyTuple_GET_ITEM(item, 4)));
    PUT(put_named(t, "],\"spis\":[", be32(id + len - 4)));
    PUT(put_named(t, ",", be32(rid)));
    return PUTS(t, "]}");
}

typedef int (*put_entry)(Text *t, PyObject *item, PyObject *names, PyObject *interfaces);

/* the entries of `items` joined by commas; slow(item) -> str writes those `put_one` leaves (returns 0) */
static PyObject *entries(PyObject *items, put_entry put_one, PyObject *names, PyObject *interfaces, PyObject *slow) {
    Text t = {NULL, 0, 0};
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        Py_INCREF(item); /* slow() may drop the list's reference */
        if (i && put(&t, ",", 1) < 0)
            goto error;
        Py_ssize_t mark = t.len;
        int r = put_one(&t, item, names, interfaces);
        if (r < 0)
            goto error;
        if (r == 0) { /* not handled here: what was written of it is dropped, Python writes it */
            t.len = mark;
            PyObject *text = PyObject_CallOneArg(slow, item);
            if (text == NULL)
                goto error;
            Py_ssize_t n;
            const char *s = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
            if (s == NULL || put(&t, s, n) < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "slow() must return a str");
                Py_DECREF(text);
                goto error;
            }
            Py_DECREF(text);
        }
        Py_DECREF(item);
        continue;
    error:
        Py_DECREF(item);
        PyMem_Free(t.p);
        return NULL;
    }
    PyObject *out = PyUnicode_DecodeUTF8(t.p, t.len, NULL);
    PyMem_Free(t.p);
    return out;
}

static PyObject *sa_entries(PyObject *self, PyObject *args) {
    PyObject *sas, *names, *interfaces, *slow;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!OO", &PyList_Type, &sas, &PyDict_Type, &names, &interfaces, &slow))
        return NULL;
    if (interfaces != Py_None && !PyDict_Check(interfaces)) {
        PyErr_SetString(PyExc_TypeError, "sa_entries: interfaces must be a dict or None");
        return NULL;
    }
    return entries(sas, put_sa, names, interfaces, slow);
}

static PyObject *tunnel_entries(PyObject *self, PyObject *args) {
    PyObject *tunnels, *names, *slow;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyList_Type, &tunnels, &PyDict_Type, &names, &slow))
        return NULL;
    return entries(tunnels, put_tunnel, names, Py_None, slow);
}

/* The document's order of SAs (SATable.all_sas): by (first_seen, generation), ties in list order, as
 * Python's stable sort on that key orders them; for 100 000 SAs a tenth of the time of the sort with
 * a key tuple per SA. None when a list item is not an agent.sa.SA or a first_seen is NaN: then Python sorts. */
typedef struct { double first_seen; long long generation; Py_ssize_t i; } OrderKey;

static int order_cmp(const void *pa, const void *pb) {
    const OrderKey *a = pa, *b = pb;
    if (a->first_seen != b->first_seen)
        return a->first_seen < b->first_seen ? -1 : 1;
    if (a->generation != b->generation)
        return a->generation < b->generation ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

static PyObject *sa_order(PyObject *self, PyObject *sas) {
    (void)self;
    if (!PyList_CheckExact(sas)) {
        PyErr_SetString(PyExc_TypeError, "sa_order(list of SAs)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(sas);
    OrderKey *k = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(OrderKey));
    if (k == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sa = PyList_GET_ITEM(sas, i);
        if (Py_TYPE(sa) != sa_type || isnan(SA(sa)->first_seen)) {
            PyMem_Free(k); /* not a key this function orders as Python does: Python sorts */
            Py_RETURN_NONE;
        }
        k[i] = (OrderKey){SA(sa)->first_seen, sa_generation(sa), i};
    }
    qsort(k, (size_t)n, sizeof(OrderKey), order_cmp);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++)
        PyList_SET_ITEM(out, i, Py_NewRef(PyList_GET_ITEM(sas, k[i].i)));
    PyMem_Free(k);
    return out;
}

/* agent.report's tunnels of a list of SAs: for each SA with a tunnel id not taken yet whose partner is
 * in the list too, (id, the first of the two in the list, the other, their two indices), by id. None
 * (Python does it) unless every SA is an agent.sa.SA with its fields set and an int or None tunnel id:
 * then no Python code runs here (an int subclass's __hash__ could change the list under its borrowed
 * items, or hash the id differently once it is a key). */
static PyObject *tunnel_pairs(PyObject *self, PyObject *sas) {
    (void)self;
    if (!PyList_CheckExact(sas)) {
        PyErr_SetString(PyExc_TypeError, "tunnel_pairs(list of SAs)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(sas), size = 16;
    while (size < 2 * n)
        size <<= 1;
    /* where each SA is in the list: open addressing on its address (an SA is in the list once) */
    struct { PyObject *sa; Py_ssize_t i; } *at = PyMem_Calloc((size_t)size, sizeof(*at));
    PyObject *pairs = PyDict_New(), *out = NULL, *ids = NULL;
    if (at == NULL || pairs == NULL) {
        if (at == NULL)
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sa = PyList_GET_ITEM(sas, i);
        if (Py_TYPE(sa) != sa_type || SA(sa)->peer == NULL) {
            PyMem_Free(at);
            Py_DECREF(pairs);
            Py_RETURN_NONE;
        }
        size_t h = ((uintptr_t)sa >> 4) * 0x9E3779B97F4A7C15ull;
        for (h >>= 20; at[h & (size - 1)].sa != NULL && at[h & (size - 1)].sa != sa; h++)
            ;
        at[h & (size - 1)].sa = sa;
        at[h & (size - 1)].i = i;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sa = PyList_GET_ITEM(sas, i), *peer = SA(sa)->peer;
        if (SA(sa)->tunnel_id < 0 || peer == Py_None)
            continue;
        PyObject *tid = PyLong_FromLongLong(SA(sa)->tunnel_id);
        int taken = tid == NULL ? -1 : PyDict_Contains(pairs, tid);
        if (taken < 0) {
            Py_XDECREF(tid);
            goto done;
        }
        if (taken) {
            Py_DECREF(tid);
            continue;
        }
        size_t h = ((uintptr_t)peer >> 4) * 0x9E3779B97F4A7C15ull;
        for (h >>= 20; at[h & (size - 1)].sa != NULL && at[h & (size - 1)].sa != peer; h++)
            ;
        if (at[h & (size - 1)].sa == NULL) {
            Py_DECREF(tid);
            continue; /* the partner is not in the list */
        }
        Py_ssize_t j = at[h & (size - 1)].i;
        PyObject *t = i <= j ? Py_BuildValue("(OOOnn)", tid, sa, peer, i, j) : Py_BuildValue("(OOOnn)", tid, peer, sa, j, i);
        int rc = t == NULL ? -1 : PyDict_SetItem(pairs, tid, t);
        Py_DECREF(tid);
        Py_XDECREF(t);
        if (rc < 0)
            goto done;
    }
    if ((ids = PyDict_Keys(pairs)) == NULL || PyList_Sort(ids) < 0 || (out = PyList_New(PyList_GET_SIZE(ids))) == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(ids); k++)
        PyList_SET_ITEM(out, k, Py_NewRef(PyDict_GetItem(pairs, PyList_GET_ITEM(ids, k))));
done:
    PyMem_Free(at);
    Py_XDECREF(pairs);
    Py_XDECREF(ids);
    return out;
}

/* ---- New SAs (SATable.create) -------------------------------------------------------------------
 * A new SA is a copy of a template SA that agent.sa.SA.__init__ built at import, twice, from two sets of
 * stand-in arguments: a field that differs between the two takes the argument (an object field holds the
 * stand-in itself, a time field `now`, a flag `udp`); every other field is the template's constant (an
 * object shared as __init__ shares it: immutable).  So __init__ stays the one definition of a new SA's
 * state; an __init__ that stores a mutable object or computes with an argument fails the import.
 * create() then does what SATable.create does: table entry, probation, schedule entry and, without a
 * pairing authority, the pairing of Pairer.add when there are no or one candidates (two or more:
 * Pairer._place, in Python). A full table drops its oldest probationer here while it has no partner
 * (make_room); the rest of _make_room is Python's. What a create reads of the table: Ctx, below. */
enum { A_KEY, N_OBJ_ARGS, A_DIRECTION = N_OBJ_ARGS, A_UDP, A_NOW, N_ARGS };
static PyObject *template_sa, *one;
static PyTypeObject *odict_type; /* collections.OrderedDict: several candidates under one flow key (agent.pairing) */
#define N_OBJECT_FIELDS (0 SA_OBJECT_FIELDS(SA_COUNT))
#define N_TIME_FIELDS (0 SA_TIME_FIELDS(SA_COUNT))
#define N_FLAG_FIELDS (0 SA_FLAG_FIELDS(SA_COUNT))
static signed char obj_arg[N_OBJECT_FIELDS], time_arg[N_TIME_FIELDS], flag_arg[N_FLAG_FIELDS]; /* the argument, or -1 */
#define SA_OFFSET(name) offsetof(SAFields, name),
static const size_t obj_off[] = {SA_OBJECT_FIELDS(SA_OFFSET)}, time_off[] = {SA_TIME_FIELDS(SA_OFFSET)},
                    flag_off[] = {SA_FLAG_FIELDS(SA_OFFSET)},
                    number_off[] = {SA_NUMBER_FIELDS(SA_OFFSET) SA_OPTIONAL_FIELDS(SA_OFFSET)};
#define FIELD(sa, type, off) (*(type *)((char *)(sa) + (off)))
static PyObject *str_sas, *str_probation, *str_pairer, *str_settings, *str_max_sas,
    *str_idle_timeout, *str_active_timeout, *str_make_room, *str_authority, *str_add, *str_unpaired,
    *str_next_tunnel, *str_place, *str_unconfirmed_sas, *str_unconfirmed_datagrams, *str_evictions,
    *str_epochs, *str_dormant, *str_remove, *str_stale_entries, *str_stale_min, *str_stale_share, *str_drop_dead, *str_dropped,
    *str_popitem, *str_move_to_end;

static int immutable(PyObject *v) {
    return v == NULL || v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v)
        || PyUnicode_CheckExact(v) || (PyTuple_CheckExact(v) && PyTuple_GET_SIZE(v) == 0);
}

/* SA(key, udp, now, direction) from stand-ins: args[A_UDP] and args[A_NOW] are the bool and the float */
static PyObject *stand_in_sa(PyObject **args) {
    return PyObject_CallFunctionObjArgs((PyObject *)sa_type, args[A_KEY], args[A_UDP], args[A_NOW], args[A_DIRECTION],
                                        NULL);
}

static int bind_template(void) {
    if (sa_type->tp_dictoffset || sa_type->tp_weaklistoffset || sa_type->tp_itemsize
        || sa_type->tp_basicsize != (Py_ssize_t)sizeof(SAFields)) {
        PyErr_SetString(PyExc_TypeError, "agent.sa.SA must add no field to agent.tracker.SAFields");
        return -1;
    }
    PyObject *a[N_ARGS] = {NULL}, *b[N_ARGS] = {NULL}, *other = NULL;
    int rc = -1;
    for (int k = 0; k < N_OBJ_ARGS; k++)
        if ((a[k] = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type)) == NULL
            || (b[k] = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type)) == NULL)
            goto done;
    a[A_DIRECTION] = PyUnicode_FromString("in");
    b[A_DIRECTION] = PyUnicode_FromString("out");
    if (a[A_DIRECTION] == NULL || b[A_DIRECTION] == NULL)
        goto done;
    a[A_UDP] = Py_NewRef(Py_False);
    b[A_UDP] = Py_NewRef(Py_True);
    if ((a[A_NOW] = PyFloat_FromDouble(1.25)) == NULL || (b[A_NOW] = PyFloat_FromDouble(2.5)) == NULL
        || (template_sa = stand_in_sa(a)) == NULL || (other = stand_in_sa(b)) == NULL)
        goto done;
    if (SA(template_sa)->cold != NULL || SA(other)->cold != NULL) {
        PyErr_SetString(PyExc_TypeError, "agent.sa.SA.__init__ writes a cold field (agent/sastate.h) other than its default");
        goto done;
    }
    for (int i = 0; i < N_OBJECT_FIELDS; i++) {
        PyObject *u = FIELD(template_sa, PyObject *, obj_off[i]), *v = FIELD(other, PyObject *, obj_off[i]);
        obj_arg[i] = -1;
        for (int k = 0; k < N_OBJ_ARGS; k++)
            if (u == a[k] && v == b[k])
                obj_arg[i] = (signed char)k;
        if (obj_arg[i] < 0 && (u != v || !immutable(u))) {
            PyErr_Format(PyExc_TypeError, "agent.sa.SA.__init__ stores a %s in a field: a copied SA would share it",
                         u != NULL ? Py_TYPE(u)->tp_name : Py_TYPE(v)->tp_name);
            goto done;
        }
    }
    for (int i = 0; i < N_TIME_FIELDS; i++) {
        double u = FIELD(template_sa, double, time_off[i]), v = FIELD(other, double, time_off[i]);
        time_arg[i] = u == 1.25 && v == 2.5 ? A_NOW : -1;
        if (time_arg[i] < 0 && u != v)
            goto computed;
    }
    for (int i = 0; i < N_FLAG_FIELDS; i++) {
        char u = FIELD(template_sa, char, flag_off[i]), v = FIELD(other, char, flag_off[i]);
        flag_arg[i] = !u && v ? A_UDP : -1;
        if (flag_arg[i] < 0 && u != v)
            goto computed;
    }
    if (SA(template_sa)->direction != SA_IN || SA(other)->direction != SA_OUT)
        goto computed;
    for (size_t i = 0; i < sizeof(number_off) / sizeof(number_off[0]); i++)
        if (FIELD(template_sa, long long, number_off[i]) != FIELD(other, long long, number_off[i]))
            goto computed;
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        goto done;
    odict_type = (PyTypeObject *)PyObject_GetAttrString(collections, "OrderedDict");
    Py_DECREF(collections);
    if (odict_type == NULL || !PyType_Check(odict_type)) {
        PyErr_SetString(PyExc_TypeError, "collections.OrderedDict is not a type");
        goto done;
    }
    one = PyLong_FromLong(1);
    PyObject **names[] = {&str_sas, &str_probation, &str_schedule, &str_epoch, &str_pairer, &str_settings, &str_max_sas,
                          &str_idle_timeout, &str_active_timeout, &str_make_room, &str_authority, &str_add,
                          &str_unpaired, &str_next_tunnel, &str_place, &str_unconfirmed_sas,
                          &str_unconfirmed_datagrams, &str_evictions, &str_epochs, &str_dormant, &str_remove,
                          &str_stale_entries, &str_stale_min, &str_stale_share, &str_drop_dead, &str_dropped,
                          &str_popitem, &str_move_to_end};
    const char *text[] = {"sas", "probation", "schedule", "epoch", "pairer", "settings", "max_sas", "idle_timeout",
                          "active_timeout", "_make_room", "authority", "add", "unpaired", "next_tunnel", "_place",
                          "unconfirmed_sas", "unconfirmed_datagrams", "evictions", "_epochs", "dormant", "remove",
                          "stale_entries", "STALE_MIN", "STALE_SHARE", "_drop_dead", "dropped", "popitem",
                          "move_to_end"};
    _Static_assert(sizeof(names) / sizeof(names[0]) == sizeof(text) / sizeof(text[0]), "one text per name");
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
        if ((*names[k] = PyUnicode_InternFromString(text[k])) == NULL)
            goto done;
    rc = one != NULL ? 0 : -1;
    goto done;
computed:
    PyErr_SetString(PyExc_TypeError, "agent.sa.SA.__init__ computes a field from its arguments: no template");
done:
    for (int k = 0; k < N_ARGS; k++) {
        Py_XDECREF(a[k]);
        Py_XDECREF(b[k]);
    }
    Py_XDECREF(other);
    return rc;
}

/* SA(key, udp, now, direction): the template with the arguments in place of the stand-ins. */
static PyObject *new_sa(PyObject *key, int udp, PyObject *now, int direction) {
    PyObject *sa = sa_type->tp_alloc(sa_type, 0);
    if (sa == NULL)
        return NULL;
    /* everything after the object header; then the object fields get their references */
    memcpy((char *)sa + sizeof(PyObject), (char *)template_sa + sizeof(PyObject), sizeof(SAFields) - sizeof(PyObject));
    PyObject *args[N_OBJ_ARGS] = {key};
    for (int i = 0; i < N_OBJECT_FIELDS; i++) {
        PyObject **f = &FIELD(sa, PyObject *, obj_off[i]);
        if (obj_arg[i] >= 0)
            *f = args[obj_arg[i]];
        Py_XINCREF(*f);
    }
    double t = PyFloat_AS_DOUBLE(now);
    for (int i = 0; i < N_TIME_FIELDS; i++)
        if (time_arg[i] >= 0)
            FIELD(sa, double, time_off[i]) = t;
    for (int i = 0; i < N_FLAG_FIELDS; i++)
        if (flag_arg[i] >= 0)
            FIELD(sa, char, flag_off[i]) = (char)udp;
    SA(sa)->direction = (char)direction;
    return sa;
}

/* The attribute `name` of `o` as a double (settings may hold ints: Python adds them as doubles too). */
static int attr_double(PyObject *o, PyObject *name, double *v) {
    PyObject *x = PyObject_GetAttr(o, name);
    if (x == NULL)
        return -1;
    *v = PyFloat_AsDouble(x);
    Py_DECREF(x);
    return *v == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* The attribute `name` of `o` as a long long. */
static int attr_i64(PyObject *o, PyObject *name, long long *v) {
    PyObject *x = PyObject_GetAttr(o, name);
    if (x == NULL)
        return -1;
    *v = PyLong_AsLongLong(x);
    Py_DECREF(x);
    return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The attribute `name` of `o`, an int, as a long long; past 63 bits the nearest (a bound compared with
 * counts, which never get there). */
static int attr_bound(PyObject *o, PyObject *name, long long *v) {
    PyObject *x = PyObject_GetAttr(o, name);
    if (x == NULL)
        return -1;
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(x, &overflow);
    Py_DECREF(x);
    if (overflow)
        *v = overflow > 0 ? LLONG_MAX : LLONG_MIN;
    return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

/* table.<name> += delta (ints) */
static int add_attr(PyObject *o, PyObject *name, PyObject *delta) {
    PyObject *v = PyObject_GetAttr(o, name), *sum = v != NULL ? PyNumber_Add(v, delta) : NULL;
    int rc = sum != NULL ? PyObject_SetAttr(o, name, sum) : -1;
    Py_XDECREF(v);
    Py_XDECREF(sum);
    return rc;
}

/* What the create path reads of its table (the Ctx): a new SA read or wrote some 30 attributes of the
 * table, its settings and its pairer, 12 % of an SPI flood's CPU. A Ctx reads them at the first new SA
 * of a walk() or create() call and keeps them to the call's end: the containers and the authority (their
 * objects: nothing rebinds them while C code runs), the settings' numbers (Meter.configure rebinds
 * `settings` between calls), and the counters a dropped probationer changes (evictions, unconfirmed_sas,
 * unconfirmed_datagrams, stale_entries, epoch), counted here. Before any Python code that may look at the
 * table (the SATable and Pairer fallbacks, the `dropped` hook, _drop_dead, a Python schedule), and at the
 * call's end, the counters are written back and the Ctx let go (ctx_leave); the next use reads it again
 * (ctx_enter). So that code, and the caller, see the table as the Python create leaves it. The only
 * Python code that runs in between does not look at the table: hashes and comparisons of keys and SAs. */
static int ctx_enter(Ctx *c) {
    if (c->loaded)
        return 0;
    PyObject *t = c->table;
    long long max = 0; /* max_sas past 63 bits (a configuration's "no bound"): the nearest */
    int ok = (c->settings = PyObject_GetAttr(t, str_settings)) != NULL
        && attr_double(c->settings, str_idle_timeout, &c->idle) == 0
        && attr_double(c->settings, str_active_timeout, &c->active) == 0
        && attr_bound(c->settings, str_max_sas, &max) == 0
        && (c->sas = PyObject_GetAttr(t, str_sas)) != NULL && (c->probation = PyObject_GetAttr(t, str_probation)) != NULL
        && (c->dormant = PyObject_GetAttr(t, str_dormant)) != NULL && (c->schedule = PyObject_GetAttr(t, str_schedule)) != NULL
        && (c->pairer = PyObject_GetAttr(t, str_pairer)) != NULL
        && (c->authority = PyObject_GetAttr(c->pairer, str_authority)) != NULL
        && (c->unpaired = PyObject_GetAttr(c->pairer, str_unpaired)) != NULL
        && (c->epochs = PyObject_GetAttr(t, str_epochs)) != NULL && (c->dropped = PyObject_GetAttr(t, str_dropped)) != NULL
        && (c->epoch = PyObject_GetAttr(t, str_epoch)) != NULL && attr_i64(t, str_stale_entries, &c->stale) == 0
        && attr_bound(t, str_stale_min, &c->stale_min) == 0 && attr_bound(t, str_stale_share, &c->stale_share) == 0;
    c->max_sas = max > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : max < PY_SSIZE_T_MIN ? PY_SSIZE_T_MIN : (Py_ssize_t)max;
    c->loaded = 1; /* what was read is let go by ctx_leave, also after a failure */
    c->dirty = 0;
    c->evictions = c->unconfirmed_sas = c->unconfirmed_datagrams = 0;
    return ok ? 0 : -1;
}

/* The counters written back to the table (the stale count as it is, the others added), the Ctx let go. */
static int ctx_leave(Ctx *c) {
    if (!c->loaded)
        return 0;
    int rc = 0;
    if (c->dirty) {
        PyObject *v = PyLong_FromLongLong(c->stale);
        rc = v == NULL || PyObject_SetAttr(c->table, str_stale_entries, v) < 0 ? -1 : 0;
        Py_XDECREF(v);
        PyObject *names[] = {str_evictions, str_unconfirmed_sas, str_unconfirmed_datagrams};
        long long deltas[] = {c->evictions, c->unconfirmed_sas, c->unconfirmed_datagrams};
        for (int k = 0; k < 3 && rc == 0; k++)
            if (deltas[k] != 0) {
                rc = (v = PyLong_FromLongLong(deltas[k])) == NULL || add_attr(c->table, names[k], v) < 0 ? -1 : 0;
                Py_XDECREF(v);
            }
        if (rc == 0)
            rc = PyObject_SetAttr(c->table, str_epoch, c->epoch);
    }
    Py_CLEAR(c->settings);
    Py_CLEAR(c->sas);
    Py_CLEAR(c->probation);
    Py_CLEAR(c->dormant);
    Py_CLEAR(c->schedule);
    Py_CLEAR(c->pairer);
    Py_CLEAR(c->authority);
    Py_CLEAR(c->unpaired);
    Py_CLEAR(c->epochs);
    Py_CLEAR(c->dropped);
    Py_CLEAR(c->epoch);
    c->loaded = c->dirty = 0;
    return rc;
}

/* The end of a call that used `c`: `result`, or NULL (its error kept when the call failed). */
static PyObject *ctx_end(Ctx *c, PyObject *result) {
    if (result == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        ctx_leave(c);
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    if (ctx_leave(c) < 0)
        Py_CLEAR(result);
    return result;
}

/* SATable._schedule of an SA created at `now` (last_seen = interval_start = now). */
static int schedule_new(Ctx *c, PyObject *sa, double now) {
    double due = fmin(now + c->idle, now + c->active);
    if (due <= now)
        due = now + fmin(c->idle, c->active);
    if (Py_IS_TYPE(c->schedule, &ScheduleType))
        return schedule_push((Schedule *)c->schedule, due, sa);
    PyObject *heap = Py_NewRef(c->schedule); /* another kind of schedule (agent.schedule.HeapSchedule) */
    PyObject *r = ctx_leave(c) < 0 ? NULL : PyObject_CallMethod(heap, "push", "dO", due, sa);
    Py_DECREF(heap);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The flow key (ident without its SPI) or, reverse, its mirror: addresses swapped, and ports for UDP. */
static PyObject *flow_key(const unsigned char *i, Py_ssize_t ident_len, int udp, int reverse) {
    Py_ssize_t len = ident_len - 4;
    int n = addr_len(ident_len);
    if (!reverse || len < 2 * n + (udp ? 4 : 0))
        return PyBytes_FromStringAndSize((const char *)i, len < 0 ? 0 : len);
    PyObject *out = PyBytes_FromStringAndSize(NULL, 2 * n + (udp ? 4 : 0));
    if (out == NULL)
        return NULL;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(o, i + n, n);
    memcpy(o + n, i, n);
    if (udp) {
        memcpy(o + 2 * n, i + 2 * n + 2, 2);
        memcpy(o + 2 * n + 2, i + 2 * n, 2);
    }
    return out;
}

/* Pairer._place(sa, reverse, the candidates) without an authority, in C when one SA waits under `reverse`,
 * or none and not exactly one under the SA's own flow key (`unpaired` holds a lone candidate itself,
 * several in an OrderedDict of them). */
static int place(Ctx *c, PyObject *sa, const unsigned char *ident, Py_ssize_t ident_len, int udp, PyObject *reverse) {
    PyObject *pairer = c->pairer, *unpaired = c->unpaired, *key = NULL, *waiting = NULL, *own = NULL;
    int rc = -1;
    if (!PyDict_CheckExact(unpaired))
        goto python;
    waiting = PyDict_GetItemWithError(unpaired, reverse);
    if (waiting == NULL && PyErr_Occurred())
        goto done;
    if (waiting != NULL && Py_TYPE(waiting) == sa_type) { /* the one candidate: Pairer._pair(it, sa) */
        PyObject *peer = waiting, *tid = NULL, *next = NULL;
        long long id = -1;
        Py_INCREF(peer);
        rc = PyDict_DelItem(unpaired, reverse) < 0 || (tid = PyObject_GetAttr(pairer, str_next_tunnel)) == NULL
            || (id = PyLong_AsLongLong(tid)) < 0 || (next = PyNumber_Add(tid, one)) == NULL
            || PyObject_SetAttr(pairer, str_next_tunnel, next) < 0 ? -1 : 0;
        if (rc == 0) {
            Py_INCREF(sa);
            Py_INCREF(peer);
            set_field(&SA(peer)->peer, sa);
            set_field(&SA(sa)->peer, peer);
            SA(peer)->tunnel_id = SA(sa)->tunnel_id = id;
        } else if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "agent.pairing.Pairer.next_tunnel is negative");
        Py_DECREF(peer);
        Py_XDECREF(tid);
        Py_XDECREF(next);
        goto done;
    }
    if (waiting == NULL) { /* a candidate itself: the first under its flow key (set in the same look-up) */
        if ((key = flow_key(ident, ident_len, udp, 0)) == NULL || (own = PyDict_SetDefault(unpaired, key, sa)) == NULL)
            goto done;
        if (own == sa || Py_TYPE(own) == odict_type) { /* the first under its flow key, or one more of several */
            rc = own == sa ? 0 : PyObject_SetItem(own, sa, Py_None);
            goto done;
        }
    }
python:; /* several candidates (Pairer.add weighs the newest), or one other under its own key (the two
           * become an OrderedDict) */
    Py_INCREF(pairer);
    int several = waiting == NULL && PyDict_CheckExact(unpaired);
    PyObject *r = ctx_leave(c) < 0 ? NULL
        : several ? PyObject_CallMethodObjArgs(pairer, str_place, sa, reverse, sa_empty_tuple, NULL)
        : PyObject_CallMethodOneArg(pairer, str_add, sa);
    Py_DECREF(pairer);
    rc = r == NULL ? -1 : 0;
    Py_XDECREF(r);
done:
    Py_XDECREF(key);
    return rc;
}

/* Pairer.add(sa) */
static int pair_new(Ctx *c, PyObject *sa, const unsigned char *ident, Py_ssize_t ident_len, int udp) {
    if (c->authority != Py_None) {
        PyObject *pairer = Py_NewRef(c->pairer);
        PyObject *r = ctx_leave(c) < 0 ? NULL : PyObject_CallMethodOneArg(pairer, str_add, sa);
        Py_DECREF(pairer);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    PyObject *reverse = flow_key(ident, ident_len, udp, 1);
    int rc = reverse == NULL ? -1 : place(c, sa, ident, ident_len, udp, reverse);
    Py_XDECREF(reverse);
    return rc;
}

/* `key` out of the ordered dict `d` if there (OrderedDict.pop(key, None): no PyDict_DelItem on it) */
static int discard(PyObject *d, PyObject *key) {
    int in = PyDict_Contains(d, key);
    return in <= 0 ? in : PyObject_DelItem(d, key);
}

/* `sa` back at the front of the probation OrderedDict `probation`, as it was before make_room took it. */
static int unpop(PyObject *probation, PyObject *key, PyObject *sa) {
    if (PyObject_SetItem(probation, key, sa) < 0)
        return -1;
    PyObject *r = PyObject_CallMethodObjArgs(probation, str_move_to_end, key, Py_False, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* SATable._stale: one more dead schedule entry; past STALE_MIN and 1/STALE_SHARE of the heap, _drop_dead,
 * which sees the table as Python's _forget leaves it there: `sa` (popped by make_room) still on probation. */
static int stale(Ctx *c, PyObject *key, PyObject *sa) {
    c->stale++;
    c->dirty = 1;
    Py_ssize_t len = Py_IS_TYPE(c->schedule, &ScheduleType) ? ((Schedule *)c->schedule)->n : PyObject_Size(c->schedule);
    if (len < 0)
        return -1;
    long long product; /* past 63 bits: its sign says */
    int over = __builtin_mul_overflow(c->stale, c->stale_share, &product) ? (c->stale < 0) == (c->stale_share < 0)
        : product > len;
    if (!(c->stale > c->stale_min && over))
        return 0;
    PyObject *table = c->table, *r = NULL;
    if (unpop(c->probation, key, sa) < 0 || ctx_leave(c) < 0 || (r = PyObject_CallMethodNoArgs(table, str_drop_dead)) == NULL
        || ctx_enter(c) < 0 || discard(c->probation, key) < 0) {
        Py_XDECREF(r);
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Pairer._unwait(fk, sa) where several wait under `fk` (`waiting`, an OrderedDict of them): one left, itself. */
static int unwait_several(PyObject *unpaired, PyObject *fk, PyObject *waiting, PyObject *sa) {
    int in = PyDict_Contains(waiting, sa);
    if (in <= 0 || PyObject_DelItem(waiting, sa) < 0)
        return in <= 0 ? in : -1;
    if (PyDict_GET_SIZE(waiting) != 1)
        return 0;
    Py_ssize_t pos = 0;
    PyObject *only, *value;
    PyDict_Next(waiting, &pos, &only, &value); /* reads the OrderedDict's own dict */
    Py_INCREF(only); /* the dict goes */
    int rc = PyDict_SetItem(unpaired, fk, only);
    Py_DECREF(only);
    return rc;
}

/* SATable._drop_unconfirmed(sa) and _forget(sa, keep=False) of a probationer without partner, which
 * make_room has taken off probation; `delta`: its datagrams not yet exported. */
static int drop_unconfirmed(Ctx *c, PyObject *key, PyObject *sa, long long delta) {
    PyObject *fk = NULL;
    int rc = -1, active = SA(sa)->active;
    long long sum;
    if (active && __builtin_add_overflow(c->unconfirmed_datagrams, delta, &sum) && (ctx_leave(c) < 0 || ctx_enter(c) < 0))
        return -1; /* the count so far written back first: the table's is an int of any size */
    if (active) {
        c->unconfirmed_sas++;
        c->unconfirmed_datagrams += delta;
        SA(sa)->active = 0;
        SA(sa)->fseq = -1;
    }
    c->evictions++;
    c->dirty = 1;
    PyObject *epoch;
    if (stale(c, key, sa) < 0 || PyDict_DelItem(c->sas, key) < 0 || (epoch = PyIter_Next(c->epochs)) == NULL)
        goto done;
    Py_SETREF(c->epoch, epoch);
    c->dirty = 1; /* stale() may have written the table and read it again */
    if (discard(c->dormant, key) < 0)
        goto done;
    /* Pairer.remove(sa): no partner, so no longer a candidate under its flow key */
    PyObject *unpaired = c->unpaired, *waiting;
    Py_ssize_t ident_len;
    const unsigned char *ident = sa_ident(sa, &ident_len);
    if (ident == NULL || (fk = flow_key(ident, ident_len, SA(sa)->udp, 0)) == NULL)
        goto done;
    waiting = PyDict_CheckExact(unpaired) ? PyDict_GetItemWithError(unpaired, fk) : NULL;
    if (waiting == sa)
        rc = PyDict_DelItem(unpaired, fk);
    else if (PyErr_Occurred())
        rc = -1;
    else if (waiting == NULL && PyDict_CheckExact(unpaired))
        rc = 0;
    else if (waiting != NULL && Py_TYPE(waiting) == odict_type) /* one of several (an SPI flood between two addresses) */
        rc = unwait_several(unpaired, fk, waiting, sa);
    else {
        PyObject *pairer = Py_NewRef(c->pairer), *r = ctx_leave(c) < 0 ? NULL : PyObject_CallMethodOneArg(pairer, str_remove, sa);
        Py_DECREF(pairer);
        rc = r == NULL || ctx_enter(c) < 0 ? -1 : 0;
        Py_XDECREF(r);
    }
    if (rc == 0 && c->dropped != Py_None) { /* SATable.dropped(sa): read mode forgets what it keyed by id(sa) */
        PyObject *hook = Py_NewRef(c->dropped), *r = ctx_leave(c) < 0 ? NULL : PyObject_CallOneArg(hook, sa);
        Py_DECREF(hook);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
done:
    Py_XDECREF(fk);
    if (rc < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "drop_unconfirmed: no next epoch");
    return rc;
}

/* SATable._make_room while the oldest probationer has no partner; 1 room made, 0 the rest is Python's.
 * The oldest comes off probation in one step (popitem), and back at the front when it is Python's. */
static int make_room(Ctx *c) {
    while (1) {
        if (ctx_enter(c) < 0)
            return -1;
        if (PyDict_GET_SIZE(c->sas) < c->max_sas)
            return 1;
        if (Py_TYPE(c->probation) != odict_type || PyDict_GET_SIZE(c->probation) == 0)
            return 0;
        PyObject *item = PyObject_CallMethodOneArg(c->probation, str_popitem, Py_False);
        if (item == NULL)
            return -1;
        PyObject *key = PyTuple_GET_ITEM(item, 0), *sa = PyTuple_GET_ITEM(item, 1);
        long long delta;
        int ours = Py_TYPE(sa) == sa_type && SA(sa)->key == key && SA(sa)->peer == Py_None
            && !__builtin_sub_overflow(SA(sa)->datagrams, SA(sa)->x_datagrams, &delta);
        int rc = ours ? drop_unconfirmed(c, key, sa, delta) : unpop(c->probation, key, sa);
        Py_DECREF(item);
        if (rc < 0)
            return -1;
        if (!ours)
            return 0;
    }
}

/* ---- The export schedule (agent.schedule) -------------------------------------------------------
 * SATable's timers: a binary heap of (due, SA) as heapq keeps a list of tuples, in 16 bytes per entry
 * instead of a 56-byte tuple and its list slot. Entries order as the tuples do (by time, then by
 * SA.__lt__), and push, pop and heapify are heapq's own steps (CPython's Modules/_heapqmodule.c:
 * siftdown, siftup): entries that compare equal (one SA twice at one time) leave in heapq's order too,
 * so a table with this schedule and one with agent.schedule.HeapSchedule export alike. No GC support:
 * the schedule holds SAs, which hold no schedule.
 */

/* (a.due, a.sa) < (b.due, b.sa), as tuples compare; -1 on error */
static inline int timer_lt(const Timer *a, const Timer *b) {
    if (a->due < b->due)
        return 1;
    if (a->due != b->due || a->sa == b->sa)
        return 0;
    return PyObject_RichCompareBool(a->sa, b->sa, Py_LT);
}

/* SA.__lt__ is Python code: a schedule it changed is an error, as heapq says of a list */
static inline int unchanged(const Schedule *s, const Timer *t, Py_ssize_t n) {
    if (s->t == t && s->n == n)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "the schedule changed during a comparison");
    return -1;
}

static int siftdown(Schedule *s, Py_ssize_t start, Py_ssize_t pos) {
    Timer *t = s->t;
    Py_ssize_t n = s->n;
    while (pos > start) {
        Py_ssize_t parent = (pos - 1) >> 1;
        int lt = timer_lt(&t[pos], &t[parent]);
        if (lt < 0 || unchanged(s, t, n) < 0)
            return -1;
        if (!lt)
            break;
        Timer tmp = t[parent];
        t[parent] = t[pos];
        t[pos] = tmp;
        pos = parent;
    }
    return 0;
}

static int siftup(Schedule *s, Py_ssize_t pos) {
    Timer *t = s->t;
    Py_ssize_t n = s->n, start = pos, limit = n >> 1;
    while (pos < limit) {
        Py_ssize_t child = 2 * pos + 1;
        if (child + 1 < n) {
            int lt = timer_lt(&t[child], &t[child + 1]);
            if (lt < 0 || unchanged(s, t, n) < 0)
                return -1;
            child += lt ^ 1;
        }
        Timer tmp = t[child];
        t[child] = t[pos];
        t[pos] = tmp;
        pos = child;
    }
    return siftdown(s, start, pos);
}

static int schedule_push(Schedule *s, double due, PyObject *sa) {
    if (s->n == s->cap) {
        Py_ssize_t cap = s->cap < 64 ? 64 : s->cap + (s->cap >> 1);
        Timer *t = PyMem_Realloc(s->t, (size_t)cap * sizeof(Timer));
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->t = t;
        s->cap = cap;
    }
    Py_INCREF(sa);
    s->t[s->n++] = (Timer){due, sa};
    return siftdown(s, 0, s->n - 1);
}

static int schedule_heapify(Schedule *s) {
    for (Py_ssize_t i = (s->n >> 1) - 1; i >= 0; i--)
        if (siftup(s, i) < 0)
            return -1;
    return 0;
}

/* Fewer entries than a quarter of the room: give back half of it (a flood's heap shrinks after it). */
static void schedule_fit(Schedule *s) {
    if (s->cap > 64 && s->n < s->cap / 4) {
        Timer *t = PyMem_Realloc(s->t, (size_t)(s->cap / 2) * sizeof(Timer));
        if (t != NULL) {
            s->t = t;
            s->cap /= 2;
        }
    }
}

static void schedule_empty(Schedule *s) {
    Timer *t = s->t;
    Py_ssize_t n = s->n;
    s->t = NULL;
    s->n = s->cap = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(t[i].sa);
    PyMem_Free(t);
}

static void schedule_dealloc(Schedule *s) {
    schedule_empty(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *schedule_push_method(Schedule *s, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 2) {
        PyErr_SetString(PyExc_TypeError, "push(due, sa)");
        return NULL;
    }
    double due = PyFloat_AsDouble(argv[0]);
    if (due == -1.0 && PyErr_Occurred())
        return NULL;
    return schedule_push(s, due, argv[1]) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *schedule_pop(Schedule *s, PyObject *unused) {
    (void)unused;
    if (s->n == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty schedule");
        return NULL;
    }
    /* the result first: out of memory, the schedule stays as it was (heapq's pop allocates nothing; a
     * head moved without its siftup would leave every later pop out of order) */
    PyObject *r = PyTuple_New(2), *due = NULL;
    if (r != NULL && s->n == 0) { /* emptied by a collection during PyTuple_New */
        PyErr_SetString(PyExc_IndexError, "pop from an empty schedule");
        Py_CLEAR(r);
    }
    if (r == NULL || (due = PyFloat_FromDouble(s->t[0].due)) == NULL) {
        Py_XDECREF(r);
        return NULL;
    }
    Timer top = s->t[0];
    s->t[0] = s->t[--s->n];
    PyTuple_SET_ITEM(r, 0, due);
    PyTuple_SET_ITEM(r, 1, top.sa);
    if (s->n > 0 && siftup(s, 0) < 0)
        Py_CLEAR(r);
    return r;
}

static PyObject *schedule_head(Schedule *s, PyObject *unused) {
    (void)unused;
    return PyFloat_FromDouble(s->n > 0 ? s->t[0].due : INFINITY);
}

static PyObject *schedule_clear(Schedule *s, PyObject *unused) {
    (void)unused;
    schedule_empty(s);
    return Py_NewRef(Py_None);
}

/* SATable._drop_dead: keep the entries whose SA is active (agent.schedule), in heap order, and heapify them
 * (HeapSchedule.drop_dead). Every entry is checked first: one that is not an agent.sa.SA
 * leaves the schedule as it was (TypeError); so no Python code runs while entries are dropped. */
static PyObject *schedule_drop_dead(Schedule *s, PyObject *unused) {
    (void)unused;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        if (Py_TYPE(s->t[i].sa) != sa_type) {
            PyErr_SetString(PyExc_TypeError, "a schedule entry is not an agent.sa.SA");
            return NULL;
        }
    }
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        if (SA(s->t[i].sa)->active)
            s->t[kept++] = s->t[i];
        else
            Py_DECREF(s->t[i].sa);
    }
    s->n = kept;
    schedule_fit(s);
    return schedule_heapify(s) < 0 ? NULL : Py_NewRef(Py_None);
}

static Py_ssize_t schedule_len(Schedule *s) { return s->n; }

/* The entries as (due, SA) tuples, in heap order (tests compare it with HeapSchedule's list). */
static PyObject *schedule_iter(Schedule *s) {
    PyObject *list = PyList_New(s->n);
    for (Py_ssize_t i = 0; list != NULL && i < s->n; i++) {
        PyObject *e = Py_BuildValue("(dO)", s->t[i].due, s->t[i].sa);
        if (e == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, e);
    }
    PyObject *it = list != NULL ? PyObject_GetIter(list) : NULL;
    Py_XDECREF(list);
    return it;
}

static PyObject *schedule_sizeof(Schedule *s, PyObject *unused) {
    (void)unused;
    return PyLong_FromSsize_t((Py_ssize_t)sizeof(Schedule) + s->cap * (Py_ssize_t)sizeof(Timer));
}

static PyMethodDef schedule_methods[] = {
    {"push", (PyCFunction)(void (*)(void))schedule_push_method, METH_FASTCALL, "push(due, sa): heapq.heappush"},
    {"pop", (PyCFunction)schedule_pop, METH_NOARGS, "pop() -> (due, sa): heapq.heappop"},
    {"head", (PyCFunction)schedule_head, METH_NOARGS, "head() -> float: the earliest due time, inf when empty"},
    {"clear", (PyCFunction)schedule_clear, METH_NOARGS, "clear(): no entry left"},
    {"drop_dead", (PyCFunction)schedule_drop_dead, METH_NOARGS,
     "drop_dead(): keep the entries of active SAs, as a heap"},
    {"__sizeof__", (PyCFunction)schedule_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods schedule_as_sequence = {.sq_length = (lenfunc)schedule_len};

static PyTypeObject ScheduleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent._fastpath.Schedule",
    .tp_doc = "Schedule(): agent.schedule.HeapSchedule in C, 16 bytes per entry",
    .tp_basicsize = sizeof(Schedule),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)schedule_dealloc,
    .tp_iter = (getiterfunc)schedule_iter,
    .tp_methods = schedule_methods,
    .tp_as_sequence = &schedule_as_sequence,
};

/* SATable.create; `hash`: the key's, or -1 (not computed yet) */
static PyObject *create_sa(Ctx *c, PyObject *key, Py_hash_t hash, PyObject *udp, PyObject *now,
                           PyObject *direction, PyObject *local) {
    PyObject *sa = NULL;
    Py_ssize_t ident_len;
    const unsigned char *ident = sa_key_ident(key, &ident_len); /* a key the caller made as agent.sakey does */
    int is_udp = PyObject_IsTrue(udp), is_local = PyObject_IsTrue(local), dir = sa_direction_code(direction);
    if (dir < 0) {
        PyErr_SetString(PyExc_TypeError, "create: direction is None, 'in' or 'out'");
        return NULL;
    }
    if (is_udp < 0 || is_local < 0 || ctx_enter(c) < 0)
        return NULL;
    int room = !PyDict_CheckExact(c->sas) ? 0 : PyDict_GET_SIZE(c->sas) < c->max_sas ? 1 : make_room(c);
    if (room < 0)
        return NULL;
    if (!room) {
        PyObject *table = c->table, *r = ctx_leave(c) < 0 ? NULL : PyObject_CallMethodOneArg(table, str_make_room, now);
        if (r == NULL || ctx_enter(c) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        Py_DECREF(r);
    }
    if ((sa = new_sa(key, is_udp, now, dir)) == NULL)
        return NULL;
    SA(sa)->local = (char)is_local;
    if ((hash == -1 && (hash = PyObject_Hash(key)) == -1) /* where the Python create's table entry hashes it */
        || (PyDict_CheckExact(c->sas) ? _PyDict_SetItem_KnownHash(c->sas, key, sa, hash) : PyObject_SetItem(c->sas, key, sa)) < 0
        || PyObject_SetItem(c->probation, key, sa) < 0
        || schedule_new(c, sa, PyFloat_AS_DOUBLE(now)) < 0 || ctx_enter(c) < 0 || pair_new(c, sa, ident, ident_len, is_udp) < 0) {
        Py_DECREF(sa);
        return NULL;
    }
    return sa;
}

static PyObject *create(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    (void)self;
    Py_ssize_t ident_len;
    if (argc != 6 || sa_key_ident(argv[1], &ident_len) == NULL || !PyFloat_CheckExact(argv[3])) {
        PyErr_SetString(PyExc_TypeError, "create(table, key bytes (agent.sakey), udp, now float, direction, local)");
        return NULL;
    }
    Ctx c = {.table = argv[0]};
    return ctx_end(&c, create_sa(&c, argv[1], -1, argv[2], argv[3], argv[4], argv[5]));
}

/* walk() with the Ctx its new SAs share (walk_ctx), written back to the table when it returns. A walk
 * started by Python code a walk runs has its own (the outer one was written back first), and the outer
 * one stops after that frame (`walks`: the SA cache is the inner one's); one thread walks, as the SA
 * cache assumes. */
static PyObject *walk_call(PyObject *self, PyObject *args) {
    Ctx c = {0}, *outer = walk_ctx;
    walk_ctx = &c;
    walks++;
    PyObject *r = walk(self, args);
    walk_ctx = outer;
    return ctx_end(&c, r);
}

static PyObject *index_pcap(PyObject *self, PyObject *args); /* agent.pcapfile: at the end of this file */
static PyObject *index_pcapng(PyObject *self, PyObject *args); /* agent.pcapng: at the end of this file */

static PyMethodDef methods[] = {
    {"walk", walk_call, METH_VARARGS,
     "walk(buf, meta, linktype, start, sas, obs, due, epoch, window, jump_limit, reorder_time, probation, table,\n"
     "direction, local_addrs) -> (stop, octets, sa, seq, ip_len, others):\n"
     "consume Ethernet, SLL or SLL2 frames (linktype: agent.decode's DLT_*): in-order ESP (and forward jumps\n"
     "that open a gap inside the window, and the first datagram of a new SA, created in `table`) and frames of\n"
     "class \"other\" from `start`; octets: their captured octets; others: how many were \"other\"; sa, seq,\n"
     "ip_len: the stop frame's SA and ESP fields when the stop frame is an ESP datagram of an SA in the table\n"
     "(not the next number, or not established); else None."},
    {"create", (PyCFunction)(void (*)(void))create, METH_FASTCALL,
     "create(table, key, udp, now, direction, local) -> SA: SATable.create, its pairing included."},
    {"index_pcap", index_pcap, METH_VARARGS,
     "index_pcap(buf, start, max_frames, swapped, nanos, snapshot, max_caplen) -> (meta, stop): the 16-byte\n"
     "records (sec, usec, offset, caplen) of the classic pcap records from `start` that are whole in buf."},
    {"index_pcapng", index_pcapng, METH_VARARGS,
     "index_pcapng(buf, pos, ifid, room, big_endian, units, offset) -> (meta, pos): the 16-byte records of the\n"
     "enhanced packet blocks of interface ifid from `pos` that are whole in buf, at most room (agent.pcapng)."},
    {"sa_entries", sa_entries, METH_VARARGS,
     "sa_entries(sas, names, interfaces, slow) -> str: the `read --json` entries of a list of SAs, joined by\n"
     "commas, as agent.report writes them; slow(sa) -> str writes the SAs this function does not handle."},
    {"sa_order", sa_order, METH_O,
     "sa_order(sas) -> list | None: the SAs by (first_seen, generation), ties in list order (SATable.all_sas);\n"
     "None where Python must sort."},
    {"tunnel_pairs", tunnel_pairs, METH_O,
     "tunnel_pairs(sas) -> list | None: (id, first SA, other SA, index of first, index of other) of each\n"
     "tunnel whose two SAs are in the list, by id (agent.report); None for ids it leaves to Python."},
    {"tunnel_entries", tunnel_entries, METH_VARARGS,
     "tunnel_entries(tunnels, names, slow) -> str: the `tunnels[]` entries of (id, forward SA, reverse SA,\n"
     "index of forward, index of reverse) tuples, as sa_entries."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

/* agent.sa.SA, built on agent._sastate.SAFields (the struct this file reads), and what the module keeps
 * of agent.sa, agent.tracker and json. */
static int bind_sa(void) {
    PyObject *state = PyImport_ImportModule("agent._sastate"), *mod = PyImport_ImportModule("agent.sa");
    PyObject *fields = state != NULL ? PyObject_GetAttrString(state, "SAFields") : NULL;
    PyObject *cls = mod != NULL ? PyObject_GetAttrString(mod, "SA") : NULL;
    PyObject *limit = mod != NULL ? PyObject_GetAttrString(mod, "NO_LIMIT") : NULL;
    PyObject *run = mod != NULL ? PyObject_GetAttrString(mod, "PROBATION_RUN") : NULL;
    PyObject *tracker = PyImport_ImportModule("agent.tracker"), *json = PyImport_ImportModule("json.encoder");
    int rc = -1;
    if (fields == NULL || cls == NULL || limit == NULL || run == NULL || tracker == NULL || json == NULL)
        goto done;
    no_limit = PyLong_AsLongLong(limit);
    /* untracked (agent/_sastate.c): out of the cyclic collector's sight, which would only walk the table again
     * and again (a quarter of an SPI flood's CPU) */
    if (!PyType_Check(cls) || !PyType_Check(fields) || !PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)fields)
        || PyType_IS_GC((PyTypeObject *)cls) || no_limit <= 0 || no_limit > (1LL << 62) + 1) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ImportError, "agent.sa.SA is not an untracked class of agent._sastate.SAFields, or its "
                                           "NO_LIMIT is not in 1..2^62 + 1");
        goto done;
    }
    sa_type = (PyTypeObject *)Py_NewRef(cls); /* kept for the module's lifetime, as the three below */
    probation_run = PyLong_AsLongLong(run);
    loss_run = PyObject_GetAttrString(tracker, "LossRun");
    encode_str = PyObject_GetAttrString(json, "encode_basestring_ascii");
    if (encode_str == NULL || loss_run == NULL || probation_run <= 0)
        goto done;
    rc = bind_template();
done:
    Py_XDECREF(state);
    Py_XDECREF(mod);
    Py_XDECREF(fields);
    Py_XDECREF(cls);
    Py_XDECREF(limit);
    Py_XDECREF(run);
    Py_XDECREF(tracker);
    Py_XDECREF(json);
    return rc;
}

PyMODINIT_FUNC PyInit__fastpath(void) {
    if ((sa_empty_tuple = PyTuple_New(0)) == NULL || bind_sa() < 0 || PyType_Ready(&ScheduleType) < 0 || (str_in = PyUnicode_InternFromString("in")) == NULL
        || (str_out = PyUnicode_InternFromString("out")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "Schedule", (PyObject *)&ScheduleType) < 0)
        Py_CLEAR(m);
    return m;
}


/* ---- Classic pcap files (agent.pcapfile) -------------------------------------------------------
 * index_pcap() walks the 16-byte record headers of a mapped pcap file from `start` and returns, for
 * at most max_frames records, what pcapy's next_batch returns for them: native u32 sec, usec,
 * offset of the frame in buf, caplen.  It stops before a record that is not whole in buf or whose
 * caplen exceeds max_caplen (libpcap's "invalid packet capture length"); agent.pcapfile decides
 * which of those it is, as libpcap would.  As libpcap 1.9 reads a version 2.4 file at microsecond
 * precision: nanosecond stamps become tv_usec = nsec / 1000 (signed in the file's own byte order,
 * unsigned in a byte-swapped file, as libpcap computes it); a caplen above the file's
 * snapshot length (and within max_caplen) is cut to it, the rest of the record skipped.
 */
static inline uint32_t pcap_u32(const unsigned char *p, int swapped) {
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

static PyObject *index_pcap(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start, max_frames;
    int swapped, nanos;
    unsigned int snapshot, max_caplen;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nnppII", &buf, &start, &max_frames, &swapped, &nanos, &snapshot, &max_caplen))
        return NULL;
    if (start < 0 || max_frames < 0 || max_frames > PY_SSIZE_T_MAX / 16) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "index_pcap: bad start or max_frames");
        return NULL;
    }
    PyObject *meta = PyBytes_FromStringAndSize(NULL, 16 * max_frames);
    if (meta == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    unsigned char *m = (unsigned char *)PyBytes_AS_STRING(meta);
    const unsigned char *b = buf.buf;
    Py_ssize_t pos = start, len = buf.len, n = 0;
    /* offsets are u32: a record that starts beyond 4 GiB of buf is left for the next buffer */
    while (n < max_frames && len - pos >= 16 && pos + 16 <= (Py_ssize_t)UINT32_MAX) {
        const unsigned char *h = b + pos;
        uint32_t caplen = pcap_u32(h + 8, swapped);
        if (caplen > max_caplen || (Py_ssize_t)caplen > len - pos - 16)
            break;
        uint32_t r[4];
        r[0] = pcap_u32(h, swapped);
        r[1] = pcap_u32(h + 4, swapped);
        if (nanos) /* libpcap: a swapped field is unsigned (SWAPLONG), the native one a signed bpf_int32 */
            r[1] = swapped ? r[1] / 1000 : (uint32_t)((int32_t)r[1] / 1000);
        r[2] = (uint32_t)(pos + 16);
        r[3] = caplen > snapshot ? snapshot : caplen;
        memcpy(m + 16 * n, r, 16);
        pos += 16 + (Py_ssize_t)caplen;
        n++;
    }
    PyBuffer_Release(&buf);
    if (n < max_frames && _PyBytes_Resize(&meta, 16 * n) < 0)
        return NULL;
    return Py_BuildValue("Nn", meta, pos);
}



/* ---- pcapng files (agent.pcapng) ---------------------------------------------------------------
 * index_pcapng() is the fast path of a run of packets of one interface: from `pos`, the Enhanced
 * Packet Blocks of interface `ifid` that follow, at most `room`, and returns their 16-byte records
 * (native u32 sec, usec, offset of the frame in buf, caplen) and where it stopped.  It stops, as
 * agent.pcapng's Python twin (index_epbs) does, before a block it does not take: another block type or
 * interface, a length below 32 or not a multiple of 4, a block not whole in buf, a caplen beyond its
 * block (agent.pcapng's block-by-block reader then says what that is).  A time stamp is `units` per
 * second (if_tsresol: any positive integer, 10^6 by default) plus `offset` seconds (if_tsoffset):
 * sec = stamp / units + offset modulo 2^32, usec = (stamp % units) * 10^6 / units, rounded down.
 */

/* `units` as an unsigned __int128; 2^84 for any larger number (it divides every u64 stamp, and every
 * u64 stamp times 10^6, to 0, as they do). */
static int ng_units(PyObject *o, unsigned __int128 *u) {
    int over;
    long long small = PyLong_AsLongLongAndOverflow(o, &over);
    if (small == -1 && PyErr_Occurred())
        return -1;
    if (over < 0 || (!over && small < 1)) {
        PyErr_SetString(PyExc_ValueError, "index_pcapng: units must be positive");
        return -1;
    }
    if (!over) {
        *u = (unsigned long long)small;
        return 0;
    }
    PyObject *shift = PyLong_FromLong(64), *high = shift != NULL ? PyNumber_Rshift(o, shift) : NULL;
    Py_XDECREF(shift);
    if (high == NULL)
        return -1;
    unsigned long long h = PyLong_AsUnsignedLongLong(high);
    Py_DECREF(high);
    if (h == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    if (h >> 20)
        *u = (unsigned __int128)1 << 84;
    else
        *u = ((unsigned __int128)h << 64) | PyLong_AsUnsignedLongLongMask(o);
    return 0;
}

/* The walk, inlined for each common `units` (a division by a constant is a multiplication). */
static inline __attribute__((always_inline)) Py_ssize_t
ng_walk(const unsigned char *b, Py_ssize_t len, Py_ssize_t *at, uint32_t ifid, Py_ssize_t room, int swapped,
        unsigned __int128 units, uint64_t offset, unsigned char *m) {
    Py_ssize_t pos = *at, n = 0;
    /* offsets are u32: a block whose frame starts beyond 4 GiB of buf is left to the block reader */
    while (n < room && len - pos >= 32 && pos + 28 <= (Py_ssize_t)UINT32_MAX) {
        const unsigned char *h = b + pos;
        uint32_t blen = pcap_u32(h + 4, swapped), caplen = pcap_u32(h + 20, swapped);
        if (pcap_u32(h, swapped) != 6 || pcap_u32(h + 8, swapped) != ifid || blen < 32 || blen % 4
            || (Py_ssize_t)blen > len - pos || caplen > blen - 32)
            break;
        uint64_t stamp = (uint64_t)pcap_u32(h + 12, swapped) << 32 | pcap_u32(h + 16, swapped);
        uint64_t sec;
        uint32_t usec;
        if (units <= UINT64_MAX / 1000000) {
            uint64_t u = (uint64_t)units, frac = stamp % u;
            sec = stamp / u;
            usec = (uint32_t)(u == 1000000 ? frac : frac * 1000000 / u);
        } else {
            sec = (uint64_t)(stamp / units);
            usec = (uint32_t)((unsigned __int128)(stamp % units) * 1000000 / units);
        }
        uint32_t r[4] = {(uint32_t)(sec + offset), usec, (uint32_t)(pos + 28), caplen};
        memcpy(m + 16 * n, r, 16);
        pos += blen;
        n++;
    }
    *at = pos;
    return n;
}

static PyObject *index_pcapng(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t pos, room;
    unsigned int ifid;
    int big;
    PyObject *units_arg;
    long long offset;
    unsigned __int128 units;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nInpOL", &buf, &pos, &ifid, &room, &big, &units_arg, &offset))
        return NULL;
    if (pos < 0 || room < 0 || room > PY_SSIZE_T_MAX / 16 || ng_units(units_arg, &units) < 0) {
        PyBuffer_Release(&buf);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "index_pcapng: bad pos or room");
        return NULL;
    }
    Py_ssize_t avail = buf.len > pos ? (buf.len - pos) / 32 : 0; /* at most one block per 32 bytes */
    if (room > avail)
        room = avail;
    PyObject *meta = PyBytes_FromStringAndSize(NULL, 16 * room);
    if (meta == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    unsigned char *m = (unsigned char *)PyBytes_AS_STRING(meta);
    int swapped = big != (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__);
    Py_ssize_t n;
    if (units == 1000000)
        n = ng_walk(buf.buf, buf.len, &pos, ifid, room, swapped, 1000000, (uint64_t)offset, m);
    else if (units == 1000000000)
        n = ng_walk(buf.buf, buf.len, &pos, ifid, room, swapped, 1000000000, (uint64_t)offset, m);
    else
        n = ng_walk(buf.buf, buf.len, &pos, ifid, room, swapped, units, (uint64_t)offset, m);
    PyBuffer_Release(&buf);
    if (n < room && _PyBytes_Resize(&meta, 16 * n) < 0)
        return NULL;
    return Py_BuildValue("Nn", meta, pos);
}
