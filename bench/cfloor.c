/* The C floor of the benchmark: the least work that meters ESP sequence numbers from a pcap file.
 *
 * libpcap reads the file; each frame is parsed as Ethernet (one optional VLAN tag) / IPv4 / ESP or
 * UDP 4500 / ESP; the SA key (src, dst, ports, SPI) goes into an open-addressing hash table holding
 * the highest sequence number seen, and every forward jump of more than one counts the numbers in
 * between as lost (a late arrival inside a counted gap un-counts one: enough for in-order loss).
 *
 *   cfloor FILE [BPF]   ->   "frames F esp E sas S lost L reordered R"
 */
#include <pcap/pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_BITS 20
#define TABLE_SIZE (1u << TABLE_BITS)

struct sa {
    uint32_t src, dst, spi, ports; /* ports = sport << 16 | dport, 0 for plain ESP */
    uint32_t last, used;
};

struct meter {
    struct sa *table;
    uint64_t frames, esp, sas, lost, reordered;
};

static inline uint32_t rd32(const u_char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static inline uint16_t rd16(const u_char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t hash(uint32_t src, uint32_t dst, uint32_t spi, uint32_t ports) {
    uint64_t h = (uint64_t)src * 0x9E3779B97F4A7C15ull;
    h ^= ((uint64_t)dst << 32 | spi) * 0xC2B2AE3D27D4EB4Full;
    h ^= (uint64_t)ports * 0x165667B19E3779F9ull;
    return (uint32_t)(h >> (64 - TABLE_BITS));
}

static void account(struct meter *m, uint32_t src, uint32_t dst, uint32_t spi, uint32_t ports, uint32_t seq) {
    uint32_t i = hash(src, dst, spi, ports);
    for (;;) {
        struct sa *sa = &m->table[i];
        if (!sa->used) {
            *sa = (struct sa){src, dst, spi, ports, seq, 1};
            m->sas++;
            return;
        }
        if (sa->src == src && sa->dst == dst && sa->spi == spi && sa->ports == ports) {
            if (seq > sa->last) {
                m->lost += seq - sa->last - 1;
                sa->last = seq;
            } else if (seq < sa->last) {
                m->reordered++;
                if (m->lost) m->lost--;
            }
            return;
        }
        i = (i + 1) & (TABLE_SIZE - 1);
    }
}

static void frame(u_char *user, const struct pcap_pkthdr *h, const u_char *p) {
    struct meter *m = (struct meter *)user;
    uint32_t len = h->caplen, at = 14;
    m->frames++;
    if (len < 14) return;
    uint16_t type = rd16(p + 12);
    if (type == 0x8100 && len >= 18) {
        type = rd16(p + 16);
        at = 18;
    }
    if (type != 0x0800 || len < at + 20 || (p[at] >> 4) != 4) return;
    uint32_t ihl = (p[at] & 0x0F) * 4u;
    if (rd16(p + at + 6) & 0x1FFF) return; /* non-first fragment */
    uint8_t proto = p[at + 9];
    uint32_t src = rd32(p + at + 12), dst = rd32(p + at + 16), ports = 0;
    at += ihl;
    if (proto == 17) {
        if (len < at + 16) return;
        uint16_t sport = rd16(p + at), dport = rd16(p + at + 2);
        if (sport != 4500 && dport != 4500) return;
        ports = (uint32_t)sport << 16 | dport;
        at += 8;
        if (rd32(p + at) == 0) return; /* non-ESP marker: IKE */
    } else if (proto != 50 || len < at + 8) {
        return;
    }
    uint32_t spi = rd32(p + at);
    if (!spi) return;
    m->esp++;
    account(m, src, dst, spi, ports, rd32(p + at + 4));
}

int main(int argc, char **argv) {
    char err[PCAP_ERRBUF_SIZE];
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: cfloor FILE [BPF]\n");
        return 2;
    }
    pcap_t *pc = pcap_open_offline(argv[1], err);
    if (!pc) {
        fprintf(stderr, "cfloor: %s\n", err);
        return 2;
    }
    if (argc == 3) {
        struct bpf_program prog;
        if (pcap_compile(pc, &prog, argv[2], 1, PCAP_NETMASK_UNKNOWN) < 0 || pcap_setfilter(pc, &prog) < 0) {
            fprintf(stderr, "cfloor: %s\n", pcap_geterr(pc));
            return 2;
        }
        pcap_freecode(&prog);
    }
    struct meter m = {calloc(TABLE_SIZE, sizeof(struct sa)), 0, 0, 0, 0, 0};
    if (!m.table) return 1;
    if (pcap_loop(pc, -1, frame, (u_char *)&m) == -1) {
        fprintf(stderr, "cfloor: %s\n", pcap_geterr(pc));
        return 1;
    }
    printf("frames %llu esp %llu sas %llu lost %llu reordered %llu\n", (unsigned long long)m.frames,
           (unsigned long long)m.esp, (unsigned long long)m.sas, (unsigned long long)m.lost,
           (unsigned long long)m.reordered);
    pcap_close(pc);
    free(m.table);
    return 0;
}
