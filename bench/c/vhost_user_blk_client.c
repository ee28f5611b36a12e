/* The C floor of vring's virtio-blk front-end: a minimal vhost-user-blk client, written from the vhost-user and
 * virtio specs. It connects to a back-end's socket, negotiates VERSION_1 (and EVENT_IDX, MQ where offered), shares
 * a memfd as guest memory, sets up split rings and keeps DEPTH requests in flight on each of QUEUES queues (one
 * thread each) for SECONDS or REQUESTS per queue. Every status byte is checked, reads are checked against the
 * per-sector pattern of vring.drivers.blk_pattern, writes write it; one JSON line goes to stdout, and any error
 * (the first is named) makes the exit status 1.
 *
 * Build: cc -O2 -pthread -o vhost_user_blk_client vhost_user_blk_client.c  (vring.drivers.blk_cfloor does this). */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5, SET_VRING_NUM = 8,
       SET_VRING_ADDR = 9, SET_VRING_BASE = 10, SET_VRING_KICK = 12, SET_VRING_CALL = 13,
       GET_PROTOCOL_FEATURES = 15, SET_PROTOCOL_FEATURES = 16, GET_QUEUE_NUM = 17, SET_VRING_ENABLE = 18,
       GET_CONFIG = 24 };
#define VERSION 0x1u
#define FLAG_REPLY 0x4u
#define F_PROTOCOL_FEATURES (1ull << 30)
#define F_VERSION_1 (1ull << 32)
#define F_EVENT_IDX (1ull << 29)
#define F_BLK_MQ (1ull << 12)
#define PF_MQ (1ull << 0)
#define PF_CONFIG (1ull << 9)
#define GPA_BASE 0x100000000ull     /* guest-physical addresses apart from our own: a mix-up fails visibly */
#define PAGE 4096u
#define SECTOR 512u
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define USED_F_NO_NOTIFY 1
#define T_IN 0
#define T_OUT 1
#define META 32u                    /* per slot: the 16-byte request header, then the status byte */

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct used_elem { uint32_t id, len; };

struct opts {
    const char *socket, *workload;
    unsigned queues, depth, block, qsize;
    double seconds, timeout;
    uint64_t requests, seed, first, count;
    int verify, event_idx;
};

struct queue {                      /* one split ring (spec 2.7) and its requests, run by one thread */
    unsigned index;
    struct desc *desc;
    uint16_t *avail;                /* flags, idx, ring[qsize], used_event */
    uint8_t *used;                  /* flags, idx, ring[qsize] of used_elem, avail_event */
    uint8_t *data, *meta;           /* slot s: data + block*s; its header and status at meta + META*s */
    uint64_t data_gpa, meta_gpa;
    int kick, call;
    uint16_t avail_idx, last_used;
    unsigned *free_slots, nfree;
    uint8_t *in_flight;             /* per slot */
    uint64_t *start_ns, *sector_of;
    uint64_t *lat, nlat, cap_lat;
    uint64_t done, position, rng;
    unsigned errors;
    int broken;                     /* the ring failed (or timed out): nothing more will come back */
    char first_error[256];
};

static struct opts o = { NULL, "randread", 1, 32, 4096, 0, 3.0, 10.0, 0, 0, 0, 0, 1, 1 };
static int sock_fd = -1;
static uint64_t features, capacity, stop_ns;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "vhost_user_blk_client: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(2);
}

/* -- vhost-user messages: a 12-byte header (request, flags, size), the payload, fds as SCM_RIGHTS ---------------- */
static void send_msg(uint32_t request, const void *payload, uint32_t size, int fd) {
    uint32_t header[3] = { request, VERSION, size };
    struct iovec iov[2] = { { header, sizeof header }, { (void *)payload, size } };
    char control[CMSG_SPACE(sizeof(int))];
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = size ? 2 : 1 };
    memset(control, 0, sizeof control);
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    if (sendmsg(sock_fd, &msg, MSG_NOSIGNAL) != (ssize_t)(sizeof header + size))
        die("sending a vhost-user message");
}

static void recv_reply(uint32_t request, void *payload, uint32_t size) {
    uint32_t header[3];
    char junk[256];
    if (recv(sock_fd, header, sizeof header, MSG_WAITALL) != sizeof header)
        die("no reply from the back-end");
    if (header[0] != request || !(header[1] & FLAG_REPLY) || header[2] > sizeof junk + size) {
        errno = 0;
        die("a reply that does not answer the request");
    }
    uint32_t keep = header[2] < size ? header[2] : size;
    if (keep && recv(sock_fd, payload, keep, MSG_WAITALL) != (ssize_t)keep)
        die("short reply");
    if (header[2] > keep && recv(sock_fd, junk, header[2] - keep, MSG_WAITALL) != (ssize_t)(header[2] - keep))
        die("short reply");
    if (header[2] < size) {
        errno = 0;
        die("a reply shorter than expected");
    }
}

static uint64_t get_u64(uint32_t request) {
    uint64_t value;
    send_msg(request, NULL, 0, -1);
    recv_reply(request, &value, sizeof value);
    return value;
}

static void set_u64(uint32_t request, uint64_t value, int fd) { send_msg(request, &value, sizeof value, fd); }

static void set_state(uint32_t request, uint32_t index, uint32_t num) {
    uint32_t state[2] = { index, num };
    send_msg(request, state, sizeof state, -1);
}

/* -- the per-sector pattern (vring/drivers/blk_pattern.py) ------------------------------------------------------- */
static uint64_t pattern_word(uint64_t sector, unsigned i) {
    return i == 0 ? sector : i == 1 ? o.seed : (sector * 0x9E3779B97F4A7C15ull + i) ^ o.seed;
}

static void pattern_fill(uint8_t *data, uint64_t sector) {
    for (unsigned s = 0; s < o.block / SECTOR; s++)
        for (unsigned i = 0; i < SECTOR / 8; i++) {
            uint64_t w = pattern_word(sector + s, i);
            memcpy(data + s * SECTOR + i * 8, &w, 8);
        }
}

static void fail(struct queue *q, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    if (!q->errors++)
        vsnprintf(q->first_error, sizeof q->first_error, fmt, args);
    va_end(args);
}

static void pattern_check(struct queue *q, const uint8_t *data, uint64_t sector) {
    for (unsigned s = 0; s < o.block / SECTOR; s++)
        for (unsigned i = 0; i < SECTOR / 8; i++) {
            uint64_t got;
            memcpy(&got, data + s * SECTOR + i * 8, 8);
            if (got != pattern_word(sector + s, i)) {
                fail(q, "sector %llu: word %u reads %#llx, not the pattern (seed %llu)",
                     (unsigned long long)(sector + s), i, (unsigned long long)got, (unsigned long long)o.seed);
                return;
            }
        }
}

/* -- the ring --------------------------------------------------------------------------------------------------- */
static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static uint64_t next_sector(struct queue *q) {
    uint64_t spb = o.block / SECTOR, blocks = o.count / spb, b;
    if (!strcmp(o.workload, "seqread")) {
        b = q->position++ % blocks;
    } else {
        b = xorshift(&q->rng) % blocks;
    }
    return o.first + b * spb;
}

static uint16_t *used_idx(struct queue *q) { return (uint16_t *)(q->used + 2); }
static uint16_t *avail_event(struct queue *q) { return (uint16_t *)(q->used + 4 + 8 * o.qsize); }
static uint16_t *used_event(struct queue *q) { return &q->avail[2 + o.qsize]; }

static void add_request(struct queue *q, int writing) {
    unsigned slot = q->free_slots[--q->nfree];
    uint64_t sector = next_sector(q);
    uint32_t header[4] = { writing ? T_OUT : T_IN, 0, 0, 0 };
    memcpy(&header[2], &sector, 8);
    memcpy(q->meta + META * slot, header, 16);
    q->meta[META * slot + 16] = 0xff;           /* a status the device must overwrite */
    if (writing)
        pattern_fill(q->data + (uint64_t)o.block * slot, sector);
    q->sector_of[slot] = sector;
    q->in_flight[slot] = 1;
    q->start_ns[slot] = now_ns();
    q->avail[2 + q->avail_idx % o.qsize] = (uint16_t)(3 * slot);   /* slot s owns descriptors 3s..3s+2 */
    q->avail_idx++;
}

static void kick_if_needed(struct queue *q, uint16_t old) {
    __atomic_store_n(&q->avail[1], q->avail_idx, __ATOMIC_RELEASE);  /* descriptors and entries visible first */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);    /* the index before reading what the device asked for */
    int needed = o.event_idx
        ? (uint16_t)(q->avail_idx - *(volatile uint16_t *)avail_event(q) - 1) < (uint16_t)(q->avail_idx - old)
        : !(*(volatile uint16_t *)q->used & USED_F_NO_NOTIFY);
    uint64_t one = 1;
    if (needed && write(q->kick, &one, 8) != 8)
        die("kick");
}

static unsigned reap(struct queue *q) {
    unsigned n = 0;
    uint16_t idx = __atomic_load_n(used_idx(q), __ATOMIC_ACQUIRE);   /* the elements after the index */
    if ((uint16_t)(idx - q->last_used) > o.depth - q->nfree) {
        fail(q, "queue %u: used index %u jumps past the %u requests in flight", q->index, idx, o.depth - q->nfree);
        q->broken = 1;
        return 0;
    }
    for (; q->last_used != idx; q->last_used++, n++) {
        struct used_elem e;
        memcpy(&e, q->used + 4 + 8 * (q->last_used % o.qsize), sizeof e);
        unsigned slot = e.id / 3;
        if (e.id % 3 || slot >= o.depth || !q->in_flight[slot]) {
            fail(q, "queue %u: used id %u is no request in flight", q->index, e.id);
            q->broken = 1;
            return n;
        }
        q->in_flight[slot] = 0;
        uint64_t t = now_ns() - q->start_ns[slot];
        if (q->nlat == q->cap_lat) {
            q->cap_lat = q->cap_lat ? 2 * q->cap_lat : 1 << 16;
            if (!(q->lat = realloc(q->lat, q->cap_lat * sizeof *q->lat)))
                die("memory");
        }
        q->lat[q->nlat++] = t;
        uint8_t status = q->meta[META * slot + 16];
        if (status)
            fail(q, "sector %llu: the request completed with status %u", (unsigned long long)q->sector_of[slot],
                 status);
        else if (o.verify && strcmp(o.workload, "randwrite"))
            pattern_check(q, q->data + (uint64_t)o.block * slot, q->sector_of[slot]);
        q->free_slots[q->nfree++] = slot;
        q->done++;
    }
    if (n && o.event_idx)
        *(volatile uint16_t *)used_event(q) = q->last_used;    /* interrupt on the next one */
    return n;
}

static void *run_queue(void *arg) {
    struct queue *q = arg;
    int writing = !strcmp(o.workload, "randwrite");
    uint64_t added = 0, count;
    for (;;) {
        uint16_t old = q->avail_idx;
        while (q->nfree && !q->errors && (!o.requests || added < o.requests) && (!stop_ns || now_ns() < stop_ns)) {
            add_request(q, writing);
            added++;
        }
        if (q->avail_idx != old)
            kick_if_needed(q, old);
        if (reap(q))
            continue;
        /* Nothing in flight once the adding above stopped: done, or stopped by an error. */
        if (q->broken || q->nfree == o.depth)
            return NULL;
        /* Re-arm the interrupt and look again before sleeping, or a completion in between is lost. */
        if (o.event_idx)
            *(volatile uint16_t *)used_event(q) = q->last_used;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(used_idx(q), __ATOMIC_ACQUIRE) != q->last_used)
            continue;
        struct pollfd p = { q->call, POLLIN, 0 };
        int r = poll(&p, 1, (int)(o.timeout * 1000));
        if (r == 0) {
            fail(q, "queue %u: no completion in %g s (%llu done)", q->index, o.timeout, (unsigned long long)q->done);
            q->broken = 1;
            return NULL;
        }
        if (r < 0 && errno != EINTR)
            die("poll");
        if (r > 0 && read(q->call, &count, 8) < 0 && errno != EAGAIN)
            die("reading the call eventfd");
    }
}

/* -- set-up: memory, rings, negotiation -------------------------------------------------------------------------- */
static uint64_t round_page(uint64_t n) { return (n + PAGE - 1) / PAGE * PAGE; }

static void setup(struct queue *qs) {
    uint64_t ring = round_page(16ull * o.qsize) + round_page(6 + 2ull * o.qsize) + round_page(6 + 8ull * o.qsize);
    uint64_t per_queue = ring + round_page((uint64_t)o.block * o.depth) + round_page(META * o.depth);
    uint64_t size = per_queue * o.queues;
    int memfd = memfd_create("vhost-user-blk-client", MFD_CLOEXEC);
    if (memfd < 0 || ftruncate(memfd, (off_t)size) < 0)
        die("memfd");
    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (base == MAP_FAILED)
        die("mmap");
    struct { uint32_t n, pad; uint64_t gpa, size, uva, offset; } table = { 1, 0, GPA_BASE, size,
                                                                            (uint64_t)(uintptr_t)base, 0 };
    send_msg(SET_MEM_TABLE, &table, sizeof table, memfd);
    for (unsigned i = 0; i < o.queues; i++) {
        struct queue *q = &qs[i];
        uint8_t *p = base + per_queue * i;
        q->index = i;
        q->desc = (struct desc *)p;
        q->avail = (uint16_t *)(p + round_page(16ull * o.qsize));
        q->used = p + round_page(16ull * o.qsize) + round_page(6 + 2ull * o.qsize);
        q->data = p + ring;
        q->meta = q->data + round_page((uint64_t)o.block * o.depth);
        q->data_gpa = GPA_BASE + (uint64_t)(q->data - base);
        q->meta_gpa = GPA_BASE + (uint64_t)(q->meta - base);
        q->free_slots = calloc(o.depth, sizeof *q->free_slots);
        q->start_ns = calloc(o.depth, sizeof *q->start_ns);
        q->sector_of = calloc(o.depth, sizeof *q->sector_of);
        q->in_flight = calloc(o.depth, 1);
        if (!q->free_slots || !q->start_ns || !q->sector_of || !q->in_flight)
            die("memory");
        for (unsigned s = 0; s < o.depth; s++) {
            int writing = !strcmp(o.workload, "randwrite");
            q->desc[3 * s] = (struct desc){ q->meta_gpa + META * s, 16, DESC_F_NEXT, (uint16_t)(3 * s + 1) };
            q->desc[3 * s + 1] = (struct desc){ q->data_gpa + (uint64_t)o.block * s, o.block,
                                                (uint16_t)(DESC_F_NEXT | (writing ? 0 : DESC_F_WRITE)),
                                                (uint16_t)(3 * s + 2) };
            q->desc[3 * s + 2] = (struct desc){ q->meta_gpa + META * s + 16, 1, DESC_F_WRITE, 0 };
            q->free_slots[s] = o.depth - 1 - s;
        }
        q->nfree = o.depth;
        q->position = (o.count / (o.block / SECTOR)) * i / o.queues;
        q->rng = o.seed * 2654435761u + i + 1;
        q->kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        q->call = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (q->kick < 0 || q->call < 0)
            die("eventfd");
        struct { uint32_t index, flags; uint64_t desc, used, avail, log; } addr = {
            i, 0, (uint64_t)(uintptr_t)q->desc, (uint64_t)(uintptr_t)q->used, (uint64_t)(uintptr_t)q->avail, 0 };
        set_state(SET_VRING_NUM, i, o.qsize);
        set_state(SET_VRING_BASE, i, 0);
        send_msg(SET_VRING_ADDR, &addr, sizeof addr, -1);
        set_u64(SET_VRING_CALL, i, q->call);
        set_u64(SET_VRING_KICK, i, q->kick);
    }
}

static void negotiate(void) {
    uint64_t offered = get_u64(GET_FEATURES), protocol = 0;
    if (!(offered & F_VERSION_1)) {
        errno = 0;
        die("the back-end does not offer VERSION_1");
    }
    if (offered & F_PROTOCOL_FEATURES) {
        protocol = get_u64(GET_PROTOCOL_FEATURES) & (PF_MQ | PF_CONFIG);
        set_u64(SET_PROTOCOL_FEATURES, protocol, -1);
    }
    send_msg(SET_OWNER, NULL, 0, -1);
    features = offered & (F_VERSION_1 | F_BLK_MQ | (o.event_idx ? F_EVENT_IDX : 0) | F_PROTOCOL_FEATURES);
    o.event_idx = !!(features & F_EVENT_IDX);
    set_u64(SET_FEATURES, features, -1);
    uint64_t queues = protocol & PF_MQ ? get_u64(GET_QUEUE_NUM) : 1;
    if (o.queues > queues) {
        errno = 0;
        die("more queues asked for than the back-end has");
    }
    if (protocol & PF_CONFIG) {
        uint8_t config[12 + 60] = { 0 };
        uint32_t head[3] = { 0, 60, 0 };
        memcpy(config, head, sizeof head);
        send_msg(GET_CONFIG, config, sizeof config, -1);
        recv_reply(GET_CONFIG, config, sizeof config);
        memcpy(&capacity, config + 12, 8);
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    static struct option longs[] = {
        { "socket", 1, 0, 's' }, { "queues", 1, 0, 'q' }, { "depth", 1, 0, 'd' }, { "bs", 1, 0, 'b' },
        { "seconds", 1, 0, 't' }, { "requests", 1, 0, 'n' }, { "workload", 1, 0, 'w' }, { "seed", 1, 0, 'S' },
        { "first", 1, 0, 'f' }, { "count", 1, 0, 'c' }, { "queue-size", 1, 0, 'Q' }, { "timeout", 1, 0, 'T' },
        { "no-verify", 0, 0, 'V' }, { "no-event-idx", 0, 0, 'E' }, { 0, 0, 0, 0 } };
    for (int c; (c = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
        switch (c) {
        case 's': o.socket = optarg; break;
        case 'q': o.queues = (unsigned)atoi(optarg); break;
        case 'd': o.depth = (unsigned)atoi(optarg); break;
        case 'b': o.block = (unsigned)atoi(optarg); break;
        case 't': o.seconds = atof(optarg); break;
        case 'n': o.requests = strtoull(optarg, NULL, 0); break;
        case 'w': o.workload = optarg; break;
        case 'S': o.seed = strtoull(optarg, NULL, 0); break;
        case 'f': o.first = strtoull(optarg, NULL, 0); break;
        case 'c': o.count = strtoull(optarg, NULL, 0); break;
        case 'Q': o.qsize = (unsigned)atoi(optarg); break;
        case 'T': o.timeout = atof(optarg); break;
        case 'V': o.verify = 0; break;
        case 'E': o.event_idx = 0; break;
        default: return 2;
        }
    }
    errno = 0;
    if (!o.socket || o.queues < 1 || o.depth < 1 || !o.block || o.block % SECTOR || o.timeout <= 0
        || (strcmp(o.workload, "randread") && strcmp(o.workload, "randwrite") && strcmp(o.workload, "seqread")))
        die("usage: --socket PATH [--workload randread|randwrite|seqread] [--queues Q] [--depth D] [--bs BYTES] "
            "[--seconds T | --requests N] [--seed S] [--first SECTOR --count SECTORS] [--no-verify]");
    if (!o.qsize)
        for (o.qsize = 128; o.qsize < 3 * o.depth; o.qsize *= 2) {}
    if (3 * o.depth > o.qsize || o.qsize > 32768 || o.qsize & (o.qsize - 1))
        die("the queue size must be a power of two of at least 3 x depth descriptors");
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", o.socket);
    if ((sock_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0
        || connect(sock_fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die(o.socket);
    negotiate();
    if (!o.count)
        o.count = capacity > o.first ? capacity - o.first : 0;
    errno = 0;
    if (o.count < o.block / SECTOR || (capacity && o.first + o.count > capacity))
        die("no whole block in the range (--first/--count, or a back-end without the CONFIG protocol feature)");
    struct queue *qs = calloc(o.queues, sizeof *qs);
    pthread_t *threads = calloc(o.queues, sizeof *threads);
    if (!qs || !threads)
        die("memory");
    setup(qs);
    for (unsigned i = 0; features & F_PROTOCOL_FEATURES && i < o.queues; i++)
        set_state(SET_VRING_ENABLE, i, 1);  /* rings start disabled once protocol features are acked */
    get_u64(GET_FEATURES);          /* a reply: every message before it has been handled */
    uint64_t start = now_ns();
    if (!o.requests)
        stop_ns = start + (uint64_t)(o.seconds * 1e9);
    for (unsigned i = 0; i < o.queues; i++)
        if (pthread_create(&threads[i], NULL, run_queue, &qs[i]))
            die("pthread_create");
    uint64_t done = 0, nlat = 0, k = 0;
    unsigned errors = 0;
    const char *first_error = "";
    for (unsigned i = 0; i < o.queues; i++) {
        pthread_join(threads[i], NULL);
        done += qs[i].done;
        nlat += qs[i].nlat;
        if (qs[i].errors && !errors)
            first_error = qs[i].first_error;
        errors += qs[i].errors;
    }
    double seconds = (double)(now_ns() - start) / 1e9;
    uint64_t *lat = malloc((nlat ? nlat : 1) * sizeof *lat);
    if (!lat)
        die("memory");
    for (unsigned i = 0; i < o.queues; i++)
        for (uint64_t j = 0; j < qs[i].nlat; j++)
            lat[k++] = qs[i].lat[j];
    qsort(lat, nlat, sizeof *lat, cmp_u64);
#define PCT(p) (nlat ? (double)lat[(uint64_t)((p) / 100.0 * (double)(nlat - 1))] / 1e3 : 0.0)
    printf("{\"client\": \"c-floor\", \"workload\": \"%s\", \"queues\": %u, \"depth\": %u, \"block\": %u, "
           "\"requests\": %llu, \"seconds\": %.6f, \"iops\": %.1f, \"mib_s\": %.2f, \"lat_us_p50\": %.2f, "
           "\"lat_us_p99\": %.2f, \"lat_us_max\": %.2f, \"event_idx\": %s, \"verified\": %s, \"errors\": %u, "
           "\"first_error\": \"%s\"}\n",
           o.workload, o.queues, o.depth, o.block, (unsigned long long)done, seconds, (double)done / seconds,
           (double)done * o.block / seconds / 1048576.0, PCT(50), PCT(99), PCT(100), o.event_idx ? "true" : "false",
           o.verify && strcmp(o.workload, "randwrite") ? "true" : "false", errors, first_error);
    return errors ? 1 : 0;
}
