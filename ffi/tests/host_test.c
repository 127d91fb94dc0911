/*
 * The C host test: does what an iOS packet-tunnel host does with tunpipe, on a real Linux
 * TUN fd that it opens itself (TUNSETIFF, IFF_TUN | IFF_NO_PI) in its own network
 * namespace, compiled against the committed header and linked against libtunpipe_ffi.a.
 *
 * Without root (no network namespace), the TUN part is reported as skipped, never passed;
 * the checks that need no TUN (NULL pointers, bad fds, stop with nothing running) still run.
 *
 * The WireGuard part runs a tunnel to wireguard-go in a second namespace (ffi/tests/wg_peer.sh,
 * or $TUNPIPE_WG_PEER) through start_tun and through a handle, with a rebind in each, and
 * reads its peer's figures the way the header says a host loops over them.
 *
 * Build and run: .ci/ffi.sh
 */
#define _GNU_SOURCE
#include "tunpipe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/rig.h"

static int passed, failed, skipped;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (cond) {                                                                        \
            passed++;                                                                      \
        } else {                                                                           \
            failed++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (last error: %s)\n", last_error());                          \
        }                                                                                  \
    } while (0)

static const char *last_error(void) {
    static __thread char buf[512];
    buf[0] = 0;
    tunpipe_last_error(buf, sizeof buf);
    return buf;
}

/* ---- log callback: counts warnings, keeps the last line ---- */

static atomic_int log_warnings;
static char last_log[512];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_log(void *context, int32_t level, const char *message) {
    (void)context;
    if (level <= TUNPIPE_LOG_WARN) atomic_fetch_add(&log_warnings, 1);
    pthread_mutex_lock(&log_lock);
    snprintf(last_log, sizeof last_log, "%s", message);
    pthread_mutex_unlock(&log_lock);
}

/* ---- start_tun on a thread, as the iOS guide's host does ---- */

struct runner {
    pthread_t thread;
    int fd;
    int result;
};

static void *run_start_tun(void *arg) {
    struct runner *r = arg;
    r->result = start_tun(r->fd);
    return NULL;
}

static void start_runner(struct runner *r, int fd) {
    r->fd = fd;
    r->result = 12345;
    pthread_create(&r->thread, NULL, run_start_tun, r);
}

/* Stops start_tun and joins its thread. A stop_tun that comes before start_tun has even
 * entered finds nothing to stop, so retry until it stops something (or start_tun failed). */
static int stop_runner(struct runner *r) {
    int code;
    for (int i = 0; i < 5000; i++) {
        code = stop_tun();
        if (code != TUNPIPE_ERR_NOT_RUNNING || r->result != 12345) break;
        sleep_ms(1);
    }
    pthread_join(r->thread, NULL);
    return code;
}

static int ping_addr(const char *addr, int count, double deadline_s) {
    char cmd[160];
    snprintf(cmd, sizeof cmd, "ping -q -c %d -i 0.2 -w %.0f %s >/dev/null 2>&1", count,
             deadline_s, addr);
    return system(cmd) == 0;
}

/* Pings the reflecting engine's other side. */
static int ping(int count, double deadline_s) { return ping_addr("10.77.0.2", count, deadline_s); }

static struct TunpipeStats global_stats(void) {
    struct TunpipeStats s;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    int code = tunpipe_stats(&s);
    CHECK(code == TUNPIPE_OK, "tunpipe_stats: %d", code);
    return s;
}

/* ---- a UDP flood towards the reflecting engine ---- */

static atomic_int flooding;
static atomic_long flood_sent;

static void *flood(void *arg) {
    (void)arg;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9999)};
    inet_pton(AF_INET, "10.77.0.2", &to.sin_addr);
    char payload[256];
    memset(payload, 0xab, sizeof payload);
    /* Bounded in count and time: it stops by itself even if the test forgets to. */
    for (long i = 0; i < 2000000 && atomic_load(&flooding); i++) {
        if (sendto(s, payload, sizeof payload, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to) > 0)
            atomic_fetch_add(&flood_sent, 1);
        else
            sched_yield();
    }
    close(s);
    return NULL;
}

/* ---- a C stage: reflects ICMPv4 echo requests, counts packets per worker ---- */

struct counters {
    atomic_ulong per_worker[8];
    int bad_window; /* 1: report a window past the buffer's end */
};

static int32_t reflect_cb(void *context, uint32_t worker, struct TunpipePacket *p) {
    struct counters *c = context;
    atomic_fetch_add(&c->per_worker[worker % 8], 1);
    if (c->bad_window) {
        p->length = p->capacity - p->offset + 1;
        return TUNPIPE_VERDICT_FORWARD;
    }
    uint8_t *ip = p->data + p->offset;
    if (p->length < 28 || (ip[0] >> 4) != 4 || ip[9] != 1) return TUNPIPE_VERDICT_DROP;
    size_t ihl = (size_t)(ip[0] & 0x0f) * 4;
    if (ihl < 20 || p->length < ihl + 8 || ip[ihl] != 8) return TUNPIPE_VERDICT_DROP;
    uint8_t addr[4];
    memcpy(addr, ip + 12, 4);
    memcpy(ip + 12, ip + 16, 4); /* swapping the addresses keeps the IP checksum */
    memcpy(ip + 16, addr, 4);
    ip[ihl] = 0; /* echo reply: the checksum's type word drops by 0x0800 */
    uint32_t sum = (uint32_t)((ip[ihl + 2] << 8) | ip[ihl + 3]) + 0x0800;
    sum = (sum & 0xffff) + (sum >> 16);
    ip[ihl + 2] = (uint8_t)(sum >> 8);
    ip[ihl + 3] = (uint8_t)sum;
    return TUNPIPE_VERDICT_FORWARD;
}

/* ---- the tests ---- */

static void test_null_pointers(void) {
    struct TunpipeConfig c;
    tunpipe_config_default(&c);
    TunpipeEngine *e = NULL;
    uint64_t n;
    size_t needed;
    char buf[8];
    struct TunpipeStats s = {.size = sizeof s};
    struct TunpipeLatency l = {.size = sizeof l};
    struct TunpipePeerStats p = {.size = sizeof p};
    int codes[] = {
        tunpipe_config_default(NULL),
        tunpipe_config_validate(NULL),
        tunpipe_config_reserved_bytes(NULL, &n),
        tunpipe_config_reserved_bytes(&c, NULL),
        tunpipe_set_config(NULL),
        tunpipe_engine_start(NULL, 0, &e),
        tunpipe_engine_start(&c, 0, NULL),
        tunpipe_engine_stop(NULL),
        tunpipe_engine_wait(NULL),
        tunpipe_engine_free(NULL),
        tunpipe_engine_stats(NULL, &s),
        tunpipe_engine_latency(NULL, &l),
        tunpipe_engine_latency_base64(NULL, TUNPIPE_LATENCY_ENGINE, buf, sizeof buf, &needed),
        tunpipe_engine_last_error(NULL, buf, sizeof buf),
        tunpipe_engine_reserved_bytes(NULL, &n),
        tunpipe_stats(NULL),
        tunpipe_latency(NULL),
        tunpipe_peer_stats(0, NULL),
        tunpipe_engine_peer_stats(NULL, 0, &p),
        tunpipe_last_error(NULL, 4),
        tunpipe_available_memory(NULL),
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        CHECK(codes[i] == TUNPIPE_ERR_NULL_POINTER, "call %zu returned %d", i, codes[i]);
    CHECK(e == NULL, "a failed start leaves *out alone");
    CHECK(strstr(last_error(), "NULL") != NULL, "last error names the NULL");
}

static void test_no_tun_needed(void) {
    CHECK(tunpipe_abi_version() == TUNPIPE_ABI_VERSION, "abi %u", tunpipe_abi_version());
    CHECK(stop_tun() == TUNPIPE_ERR_NOT_RUNNING, "stop_tun with nothing running");
    CHECK(strlen(last_error()) > 0, "stop_tun's error has text");

    struct TunpipeConfig c;
    CHECK(tunpipe_config_default(&c) == TUNPIPE_OK, "defaults");
    CHECK(c.size == sizeof c, "size %u", c.size);
    c.mtu = 9000;
    CHECK(tunpipe_config_validate(&c) == TUNPIPE_OK, "mtu 9000 is valid");
    c.mtu = 0xffffffffu;
    CHECK(tunpipe_config_validate(&c) == TUNPIPE_ERR_CONFIG, "huge mtu");
    CHECK(tunpipe_set_config(&c) == TUNPIPE_ERR_CONFIG, "huge mtu refused globally");
    tunpipe_config_default(&c);
    c.pool_buffers = 0xffffffffu;
    TunpipeEngine *e = NULL;
    CHECK(tunpipe_engine_start(&c, 0, &e) == TUNPIPE_ERR_CONFIG && e == NULL, "huge pool");

    /* Bad fds: a pipe, /dev/null, a closed fd. Each refused with text, none closed. */
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    int devnull = open("/dev/null", O_RDWR);
    int bad[] = {pipefd[0], devnull};
    for (int i = 0; i < 2; i++) {
        int code = start_tun(bad[i]);
        CHECK(code == TUNPIPE_ERR_BAD_FD, "start_tun(fd %d) = %d", bad[i], code);
        CHECK(strstr(last_error(), "not a TUN") != NULL, "bad fd message");
        tunpipe_config_default(&c);
        code = tunpipe_engine_start(&c, bad[i], &e);
        CHECK(code == TUNPIPE_ERR_BAD_FD && e == NULL, "engine_start(fd %d) = %d", bad[i], code);
        CHECK(fd_is_open(bad[i]), "the host's fd stays open");
    }
    close(pipefd[1]);
    int closed = pipefd[1];
    CHECK(start_tun(closed) == TUNPIPE_ERR_BAD_FD, "closed fd");
    CHECK(strlen(last_error()) > 0, "closed fd message");
    CHECK(start_tun(-1) == TUNPIPE_ERR_UNSUPPORTED, "fd < 0 is Apple only");
    struct TunpipePeerStats p = {.size = sizeof p};
    CHECK(tunpipe_peer_stats(0, &p) == TUNPIPE_ERR_NOT_RUNNING, "peer stats before any start_tun");
    close(pipefd[0]);
    close(devnull);

    uint64_t avail = 7;
    CHECK(tunpipe_available_memory(&avail) == TUNPIPE_ERR_UNSUPPORTED && avail == 0,
          "os_proc_available_memory is iOS/tvOS only");
    CHECK(atomic_load(&log_warnings) > 0, "rejected calls were logged");
}

static void test_start_tun(int fd) {
    int flags = fcntl(fd, F_GETFL);

    /* Pings answered by the default reflect stage. */
    struct runner r;
    start_runner(&r, fd);
    CHECK(ping(3, 10), "the kernel's pings are answered");
    struct runner second;
    start_runner(&second, fd);
    pthread_join(second.thread, NULL);
    CHECK(second.result == TUNPIPE_ERR_ALREADY_RUNNING, "second start_tun: %d", second.result);
    CHECK(stop_runner(&r) == TUNPIPE_OK, "stop_tun");
    CHECK(r.result == TUNPIPE_OK, "start_tun returned %d after a clean stop", r.result);
    struct TunpipeStats s = global_stats();
    CHECK(s.tx_packets >= 3, "tx %llu", (unsigned long long)s.tx_packets);
    CHECK(s.rx_packets == s.tx_packets + s.dropped, "conservation after stop");
    struct TunpipePeerStats p = {.size = sizeof p};
    CHECK(tunpipe_peer_stats(0, &p) == TUNPIPE_ERR_UNSUPPORTED, "no peers without a tunnel");
    CHECK(fd_is_open(fd), "fd open after stop");
    CHECK(fcntl(fd, F_GETFL) == flags, "flags restored after stop");
    CHECK(stop_tun() == TUNPIPE_ERR_NOT_RUNNING, "nothing runs after stop");

    /* Stop while idle. */
    start_runner(&r, fd);
    sleep_ms(100);
    CHECK(stop_runner(&r) == TUNPIPE_OK && r.result == TUNPIPE_OK, "stop while idle");

    /* Stop under a UDP flood, then the flood ends. */
    start_runner(&r, fd);
    pthread_t sender;
    atomic_store(&flooding, 1);
    pthread_create(&sender, NULL, flood, NULL);
    sleep_ms(300);
    CHECK(stop_runner(&r) == TUNPIPE_OK && r.result == TUNPIPE_OK, "stop under a flood");
    atomic_store(&flooding, 0);
    pthread_join(sender, NULL);
    s = global_stats();
    CHECK(s.rx_packets > 0, "the flood reached the engine (%ld sent)", atomic_load(&flood_sent));
    CHECK(s.rx_packets == s.tx_packets + s.dropped, "conservation after a stop under load");
    CHECK(fcntl(fd, F_GETFL) == flags, "flags restored after a loaded stop");

    /* Restart on the same fd, several times; a quick start-then-stop too. */
    for (int i = 0; i < 4; i++) {
        start_runner(&r, fd);
        if (i % 2 == 0) CHECK(ping(1, 5), "ping on restart %d", i);
        CHECK(stop_runner(&r) == TUNPIPE_OK, "stop on restart %d", i);
        CHECK(r.result == TUNPIPE_OK, "start_tun on restart %d: %d", i, r.result);
        CHECK(fd_is_open(fd), "fd open after restart %d", i);
    }

    /* A larger MTU and two workers through the global config. */
    struct TunpipeConfig c;
    tunpipe_config_default(&c);
    c.mtu = 9000;
    c.workers = 2;
    CHECK(tunpipe_set_config(&c) == TUNPIPE_OK, "set_config");
    start_runner(&r, fd);
    CHECK(ping(2, 5), "pings with 2 workers, mtu 9000");
    CHECK(stop_runner(&r) == TUNPIPE_OK && r.result == TUNPIPE_OK, "stop with 2 workers");
    tunpipe_config_default(&c);
    tunpipe_set_config(&c);
}

static void *stop_engine(void *engine) {
    tunpipe_engine_stop(engine);
    return NULL;
}

static void test_handles(int fd) {
    struct counters counters;
    memset(&counters, 0, sizeof counters);
    struct TunpipeConfig c;
    tunpipe_config_default(&c);
    c.workers = 2;
    c.stage = TUNPIPE_STAGE_CALLBACK;
    c.callback = reflect_cb;
    c.callback_context = &counters;
    TunpipeEngine *e = NULL;
    int code = tunpipe_engine_start(&c, fd, &e);
    CHECK(code == TUNPIPE_OK && e != NULL, "engine_start: %d", code);
    if (!e) return;
    CHECK(stop_tun() == TUNPIPE_ERR_NOT_RUNNING, "stop_tun leaves handle engines alone");
    CHECK(ping(3, 10), "pings answered by the C stage");

    struct TunpipeStats s;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    /* The writer counts a chunk once it has sent all of it, so the last reply can reach ping
     * a moment before the counter moves: poll briefly (a hang guard, not a timing check). */
    for (int i = 0; i < 200; i++) {
        CHECK(tunpipe_engine_stats(e, &s) == TUNPIPE_OK && s.size == sizeof s, "stats");
        if (s.tx_packets >= 3) break;
        usleep(10000);
    }
    unsigned long calls = 0;
    for (int i = 0; i < 8; i++) calls += atomic_load(&counters.per_worker[i]);
    CHECK(s.rx_packets >= 3 && s.tx_packets >= 3, "rx %llu tx %llu",
          (unsigned long long)s.rx_packets, (unsigned long long)s.tx_packets);
    CHECK(calls >= 3 && calls <= s.rx_packets, "callback calls %lu", calls);
    CHECK(s.callback_errors == 0, "no callback errors");
    CHECK(s.reserved_bytes > 0, "reserved bytes");
    struct TunpipeStats tiny = {.size = 4};
    CHECK(tunpipe_engine_stats(e, &tiny) == TUNPIPE_ERR_STRUCT_SIZE, "size too small");
    char text[256];
    CHECK(tunpipe_engine_last_error(e, text, sizeof text) > 0 && strstr(text, "size"),
          "the handle keeps its last error: %s", text);

    struct TunpipeLatency l;
    memset(&l, 0, sizeof l);
    l.size = sizeof l;
    CHECK(tunpipe_engine_latency(e, &l) == TUNPIPE_OK, "latency");
    CHECK(l.engine.count >= 3 && l.engine.p50 > 0 && l.engine.max >= l.engine.p50,
          "engine latency n=%llu p50=%llu", (unsigned long long)l.engine.count,
          (unsigned long long)l.engine.p50);
    size_t needed = 0;
    code = tunpipe_engine_latency_base64(e, TUNPIPE_LATENCY_ENGINE, NULL, 0, &needed);
    CHECK(code == TUNPIPE_ERR_BUFFER_TOO_SMALL && needed > 1, "length query: %d %zu", code,
          needed);
    char *b64 = malloc(needed);
    code = tunpipe_engine_latency_base64(e, TUNPIPE_LATENCY_ENGINE, b64, needed, &needed);
    CHECK(code == TUNPIPE_OK && strlen(b64) == needed - 1 && strlen(b64) > 0, "base64: %d",
          code);
    free(b64);
    uint64_t reserved = 0;
    CHECK(tunpipe_engine_reserved_bytes(e, &reserved) == TUNPIPE_OK &&
              reserved == s.reserved_bytes, "reserved bytes agree");

    CHECK(tunpipe_engine_stop(e) == TUNPIPE_OK, "engine_stop");
    CHECK(tunpipe_engine_stop(e) == TUNPIPE_OK, "a second stop is fine");
    CHECK(tunpipe_engine_latency(e, &l) == TUNPIPE_OK && l.engine.count >= 3,
          "latency still readable after stop");
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    tunpipe_engine_stats(e, &s);
    CHECK(s.rx_packets == s.tx_packets + s.dropped, "handle conservation");
    CHECK(tunpipe_engine_free(e) == TUNPIPE_OK, "free");
    CHECK(fd_is_open(fd), "fd open after free");

    /* A callback that reports a window past the buffer: dropped and counted, not sent. */
    memset(&counters, 0, sizeof counters);
    counters.bad_window = 1;
    e = NULL;
    CHECK(tunpipe_engine_start(&c, fd, &e) == TUNPIPE_OK, "bad-window engine");
    if (!e) return;
    CHECK(!ping(2, 2), "nothing comes back from a broken callback");
    CHECK(tunpipe_engine_stop(e) == TUNPIPE_OK, "stop the bad-window engine");
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    tunpipe_engine_stats(e, &s);
    CHECK(s.callback_errors >= 2 && s.tx_packets == 0,
          "bad windows counted, nothing sent: errors %llu tx %llu",
          (unsigned long long)s.callback_errors, (unsigned long long)s.tx_packets);
    CHECK(s.drop_stage >= s.callback_errors, "and counted as stage drops");
    CHECK(s.rx_packets == s.tx_packets + s.dropped, "bad-window conservation");
    tunpipe_engine_free(e);

    /* Waiting for a stop from another thread; then free a running engine. */
    e = NULL;
    c.stage = TUNPIPE_STAGE_REFLECT;
    CHECK(tunpipe_engine_start(&c, fd, &e) == TUNPIPE_OK, "reflect handle");
    if (!e) return;
    CHECK(ping(1, 5), "reflect handle answers");
    pthread_t stopper;
    pthread_create(&stopper, NULL, stop_engine, e);
    CHECK(tunpipe_engine_wait(e) == TUNPIPE_OK, "wait returns once another thread stops");
    pthread_join(stopper, NULL);
    CHECK(tunpipe_engine_free(e) == TUNPIPE_OK, "free after wait");
    e = NULL;
    CHECK(tunpipe_engine_start(&c, fd, &e) == TUNPIPE_OK, "another handle");
    if (!e) return;
    CHECK(tunpipe_engine_free(e) == TUNPIPE_OK, "free stops a running engine");
    CHECK(fd_is_open(fd), "fd open at the end");
}

/* ---- what an adversarial host does: a slow callback at stop, a cleared O_NONBLOCK, a crowd
 * of latency readers (each once broke: a stop held for a whole batch, a hang, false
 * "stopping" answers) ---- */

struct held {
    atomic_int calls, entered, released;
};

/* Holds its first call until the test releases it; counts every call. */
static int32_t held_cb(void *context, uint32_t worker, struct TunpipePacket *p) {
    struct held *h = context;
    (void)worker;
    (void)p;
    atomic_fetch_add(&h->calls, 1);
    atomic_store(&h->entered, 1);
    while (!atomic_load(&h->released)) sched_yield();
    return TUNPIPE_VERDICT_DROP;
}

/* Sends `n` UDP datagrams into tp0 (to 10.77.0.2:9). */
static void send_udp(int n) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "10.77.0.2", &to.sin_addr);
    for (int i = 0; i < n; i++) sendto(s, "held", 4, 0, (struct sockaddr *)&to, sizeof to);
    close(s);
}

static void test_slow_callback_at_stop(int fd) {
    struct held h;
    memset(&h, 0, sizeof h);
    struct TunpipeConfig c;
    tunpipe_config_default(&c);
    c.stage = TUNPIPE_STAGE_CALLBACK;
    c.callback = held_cb;
    c.callback_context = &h;
    /* Queued in the TUN before the engine starts: its first read takes them all, so the
     * first is held in the callback with the others in the same batch behind it. */
    send_udp(40);
    struct TunpipeEngine *e = NULL;
    CHECK(tunpipe_engine_start(&c, fd, &e) == TUNPIPE_OK, "held-callback engine");
    if (!e) return;
    for (int i = 0; i < 5000 && !atomic_load(&h.entered); i++) sleep_ms(1);
    CHECK(atomic_load(&h.entered), "the callback was called");
    pthread_t stopper;
    pthread_create(&stopper, NULL, stop_engine, e);
    /* Latency says STOPPING exactly between a stop request and the end of its join. */
    struct TunpipeLatency l;
    memset(&l, 0, sizeof l);
    l.size = sizeof l;
    int requested = 0;
    for (int i = 0; i < 5000 && !requested; i++) {
        requested = tunpipe_engine_latency(e, &l) == TUNPIPE_ERR_STOPPING;
        if (!requested) sleep_ms(1);
    }
    CHECK(requested, "the stop was requested");
    atomic_store(&h.released, 1);
    pthread_join(stopper, NULL);
    struct TunpipeStats s;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    tunpipe_engine_stats(e, &s);
    CHECK(atomic_load(&h.calls) == 1, "no callback after the stop request: %d calls",
          atomic_load(&h.calls));
    CHECK(s.drop_stopped >= 39, "the rest of the batch counted as stopped: %llu",
          (unsigned long long)s.drop_stopped);
    CHECK(s.rx_packets == s.tx_packets + s.dropped, "held-callback conservation");
    tunpipe_engine_free(e);
}

static void test_nonblock_cleared(int fd) {
    int flags = fcntl(fd, F_GETFL);
    struct runner r;
    start_runner(&r, fd);
    /* The host clears O_NONBLOCK while the engine runs on its dup (they share the flag). */
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    CHECK(ping(3, 10), "pings answered with O_NONBLOCK cleared");
    sleep_ms(50);
    /* A reader blocked in read() would hang here: main's alarm turns that into a failure. */
    CHECK(stop_runner(&r) == TUNPIPE_OK && r.result == TUNPIPE_OK, "idle stop, flag cleared");
    CHECK((fcntl(fd, F_GETFL) & O_NONBLOCK) == 0, "the engine left the host's flag alone");
    fcntl(fd, F_SETFL, flags);
}

struct asker {
    pthread_t thread;
    struct TunpipeEngine *engine;
    int refused;
};

static void *ask_latency(void *arg) {
    struct asker *a = arg;
    struct TunpipeLatency l;
    for (int i = 0; i < 300; i++) {
        memset(&l, 0, sizeof l);
        l.size = sizeof l;
        if (tunpipe_engine_latency(a->engine, &l) != TUNPIPE_OK) a->refused++;
    }
    return NULL;
}

static void test_latency_crowd(int fd) {
    struct TunpipeConfig c;
    tunpipe_config_default(&c);
    struct TunpipeEngine *e = NULL;
    CHECK(tunpipe_engine_start(&c, fd, &e) == TUNPIPE_OK, "latency-crowd engine");
    if (!e) return;
    struct asker askers[24];
    for (int i = 0; i < 24; i++) {
        askers[i].engine = e;
        askers[i].refused = 0;
        pthread_create(&askers[i].thread, NULL, ask_latency, &askers[i]);
    }
    int refused = 0;
    for (int i = 0; i < 24; i++) {
        pthread_join(askers[i].thread, NULL);
        refused += askers[i].refused;
    }
    CHECK(refused == 0, "a running engine answered every latency call (%d refused)", refused);
    tunpipe_engine_free(e);
}

/* ---- a WireGuard tunnel to wireguard-go, as an iOS host runs one ---- */

static int read_text(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    fclose(f);
    return n > 0;
}

static struct TunpipeTunnelStats tunnel_stats_of(struct TunpipeEngine *e) {
    struct TunpipeTunnelStats t;
    memset(&t, 0, sizeof t);
    t.size = sizeof t;
    int code = e ? tunpipe_engine_tunnel_stats(e, &t) : tunpipe_tunnel_stats(&t);
    CHECK(code == TUNPIPE_OK, "tunnel stats: %d", code);
    return t;
}

static void check_tunnel_after_stop(struct TunpipeTunnelStats t, struct TunpipeStats s,
                                    const char *how) {
    CHECK(t.handshakes_completed >= 1, "%s: a handshake (%llu)", how,
          (unsigned long long)t.handshakes_completed);
    CHECK(t.data_rx_packets >= 6, "%s: the peer's replies came through the tunnel (%llu)", how,
          (unsigned long long)t.data_rx_packets);
    CHECK(strcmp(t.endpoint, "192.168.78.2:51820") == 0, "%s: endpoint %s", how, t.endpoint);
    CHECK(t.outbound.packets_in + t.outbound.originated ==
              t.outbound.packets_out + t.outbound.dropped + t.outbound.consumed,
          "%s: outbound conservation", how);
    CHECK(t.inbound.packets_in + t.inbound.originated ==
              t.inbound.packets_out + t.inbound.dropped + t.inbound.consumed,
          "%s: inbound conservation", how);
    CHECK(s.rx_packets + s.originated == s.tx_packets + s.dropped + s.consumed,
          "%s: conservation of both directions together", how);
}

/* Standard base64 with padding, as wg-quick writes keys: `out` holds 4 * ((n + 2) / 3) + 1. */
static void base64_of(const uint8_t *in, size_t n, char *out) {
    static const char digits[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = digits[(v >> 18) & 63];
        out[o++] = digits[(v >> 12) & 63];
        out[o++] = i + 1 < n ? digits[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? digits[v & 63] : '=';
    }
    out[o] = 0;
}

/* The peer's public key as the wg-quick text says it (the only PublicKey line in it). */
static int peer_key_of(const char *conf, char key[45]) {
    const char *line = strstr(conf, "PublicKey = ");
    if (!line) return 0;
    snprintf(key, 45, "%s", line + strlen("PublicKey = "));
    return strlen(key) == 44;
}

/* Peer `index` of the handle's tunnel, or of the start_tun tunnel with `e == NULL`. */
static int peer_stats_of(struct TunpipeEngine *e, uint32_t index, struct TunpipePeerStats *p) {
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    return e ? tunpipe_engine_peer_stats(e, index, p) : tunpipe_peer_stats(index, p);
}

/* Every peer, read as the header says a host reads them: `peers`, then indexes until
 * TUNPIPE_ERR_NOT_FOUND. Checks the one peer of wg_peer.sh after pings, and the refusals. */
static void check_peers_after_stop(struct TunpipeEngine *e, struct TunpipeTunnelStats t,
                                   const char *peer_key, const char *how) {
    struct TunpipePeerStats p;
    uint32_t n = 0;
    int code;
    while ((code = peer_stats_of(e, n, &p)) == TUNPIPE_OK) n++;
    CHECK(code == TUNPIPE_ERR_NOT_FOUND && n == t.peers && n == 1,
          "%s: the loop ended with %d after %u peers (peers says %u)", how, code, n, t.peers);
    CHECK(strstr(last_error(), "no peer 1") != NULL, "%s: the end of the list says why", how);

    code = peer_stats_of(e, 0, &p);
    CHECK(code == TUNPIPE_OK && p.size == sizeof p, "%s: peer 0: %d, size %u", how, code, p.size);
    char key[45];
    base64_of(p.public_key, sizeof p.public_key, key);
    CHECK(strcmp(key, peer_key) == 0, "%s: public key %s, configured %s", how, key, peer_key);
    CHECK(strcmp(p.endpoint, "192.168.78.2:51820") == 0, "%s: peer endpoint %s", how, p.endpoint);
    CHECK(p.handshakes >= 1 && p.last_handshake_sec > 0 && p.last_handshake_nsec < 1000000000u,
          "%s: peer handshakes %llu, last at %lld.%09u", how, (unsigned long long)p.handshakes,
          (long long)p.last_handshake_sec, p.last_handshake_nsec);
    CHECK(p.last_handshake_sec <= (int64_t)time(NULL) &&
              p.last_handshake_sec > (int64_t)time(NULL) - 300,
          "%s: the last handshake was during this run (%lld)", how,
          (long long)p.last_handshake_sec);
    /* Messages on the wire: at least the pings and their replies, in messages of 32 bytes
     * or more, so more than the data the tunnel carried inside. */
    CHECK(p.tx_packets >= 6 && p.rx_packets >= 6 && p.tx_bytes > 32 * 6 && p.rx_bytes > 32 * 6,
          "%s: peer tx %llu/%llu rx %llu/%llu", how, (unsigned long long)p.tx_packets,
          (unsigned long long)p.tx_bytes, (unsigned long long)p.rx_packets,
          (unsigned long long)p.rx_bytes);
    CHECK(p.rx_bytes > t.data_rx_bytes, "%s: wire bytes %llu > inner bytes %llu", how,
          (unsigned long long)p.rx_bytes, (unsigned long long)t.data_rx_bytes);
    CHECK(p.dropped == p.drop_auth_failure + p.drop_replay + p.drop_not_allowed +
                           p.drop_no_session + p.drop_no_endpoint + p.drop_no_handshake +
                           p.drop_garbage,
          "%s: peer dropped is the sum of its reasons", how);

    CHECK(peer_stats_of(e, 0xffffffffu, &p) == TUNPIPE_ERR_NOT_FOUND, "%s: index UINT32_MAX", how);
    code = e ? tunpipe_engine_peer_stats(e, 0, NULL) : tunpipe_peer_stats(0, NULL);
    CHECK(code == TUNPIPE_ERR_NULL_POINTER, "%s: NULL out: %d", how, code);
    memset(&p, 0, sizeof p);
    p.size = 4;
    code = e ? tunpipe_engine_peer_stats(e, 0, &p) : tunpipe_peer_stats(0, &p);
    CHECK(code == TUNPIPE_ERR_STRUCT_SIZE, "%s: size 4: %d", how, code);
}

static void test_wireguard(const char *peer_script) {
    if (system("command -v wireguard-go >/dev/null && command -v wg >/dev/null") != 0) {
        printf("SKIPPED: the WireGuard part needs wireguard-go and wireguard-tools\n");
        skipped++;
        return;
    }
    char dir[] = "/tmp/tunpipe-c-wg-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
    char cmd[512], path[600];
    snprintf(cmd, sizeof cmd, "bash %s up %s", peer_script, dir);
    int up = system(cmd);
    CHECK(up == 0, "the wireguard-go peer came up (%s)", cmd);
    static char conf[4096];
    snprintf(path, sizeof path, "%s/tunpipe.conf", dir);
    int have_conf = read_text(path, conf, sizeof conf);
    CHECK(have_conf, "read %s", path);
    char peer_key[45] = "";
    CHECK(peer_key_of(conf, peer_key), "the peer's PublicKey in %s", path);
    int fd = open_tun("tpw");
    CHECK(fd >= 0, "open the tunnel's TUN: %s", strerror(errno));
    if (up != 0 || !have_conf || fd < 0) goto down;

    /* What the host applies to its interface (NEPacketTunnelNetworkSettings on iOS). */
    size_t needed = 0;
    CHECK(tunpipe_wireguard_settings(conf, NULL, 0, &needed) == TUNPIPE_ERR_BUFFER_TOO_SMALL,
          "settings: size query");
    char *json = malloc(needed);
    CHECK(json && tunpipe_wireguard_settings(conf, json, needed, NULL) == TUNPIPE_OK, "settings");
    CHECK(json && strstr(json, "\"addresses\":[\"10.78.0.1/24\"]") && strstr(json, "\"mtu\":1420") &&
              strstr(json, "\"endpoint_host\":\"192.168.78.2\"") && !strstr(json, "PrivateKey"),
          "settings: %s", json ? json : "(none)");
    free(json);
    CHECK(system("ip addr add 10.78.0.1/24 dev tpw && ip link set tpw mtu 1420 up") == 0,
          "configure tpw");

    /* start_tun with the wg-quick text in the global config; the text is copied at once. */
    struct TunpipeConfig c;
    tunpipe_config_default(&c);
    c.wireguard_config = conf;
    CHECK(tunpipe_set_config(&c) == TUNPIPE_OK, "set_config with a WireGuard text");
    memset(conf, 'x', sizeof conf - 1);
    struct runner r;
    start_runner(&r, fd);
    CHECK(ping_addr("10.78.0.2", 3, 10), "ping through the tunnel");
    CHECK(tunpipe_rebind() == TUNPIPE_OK, "tunpipe_rebind");
    CHECK(ping_addr("10.78.0.2", 3, 10), "ping through the tunnel after the rebind");
    double at = now_ms();
    int stopped = stop_runner(&r);
    printf("stop_tun with the WireGuard tunnel up: %.2f ms\n", now_ms() - at);
    CHECK(stopped == TUNPIPE_OK && r.result == TUNPIPE_OK, "stop_tun: %d, start_tun: %d",
          stopped, r.result);
    CHECK(fd_is_open(fd), "the fd stays open after stop_tun");
    struct TunpipeTunnelStats t = tunnel_stats_of(NULL);
    check_tunnel_after_stop(t, global_stats(), "start_tun");
    check_peers_after_stop(NULL, t, peer_key, "start_tun");
    CHECK(tunpipe_rebind() == TUNPIPE_ERR_NOT_RUNNING, "rebind with nothing running");

    /* The same through a handle, on the same fd (and so the same UDP port, free again). */
    CHECK(read_text(path, conf, sizeof conf), "re-read %s", path);
    c.wireguard_config = conf;
    struct TunpipeEngine *e = NULL;
    CHECK(tunpipe_engine_start(&c, fd, &e) == TUNPIPE_OK, "tunpipe_engine_start with a tunnel");
    if (e) {
        CHECK(ping_addr("10.78.0.2", 3, 10), "ping through the handle's tunnel");
        CHECK(tunpipe_engine_rebind(e) == TUNPIPE_OK, "tunpipe_engine_rebind");
        CHECK(ping_addr("10.78.0.2", 3, 10), "ping after the handle's rebind");
        CHECK(tunpipe_engine_suspend(e) == TUNPIPE_OK, "tunpipe_engine_suspend");
        CHECK(tunpipe_engine_suspend(e) == TUNPIPE_OK, "suspend again: nothing to do");
        CHECK(tunpipe_engine_resume(e) == TUNPIPE_OK, "tunpipe_engine_resume");
        CHECK(tunpipe_engine_disable_roaming(e) == TUNPIPE_OK, "tunpipe_engine_disable_roaming");
        CHECK(ping_addr("10.78.0.2", 3, 10), "ping after the handle's resume");
        at = now_ms();
        CHECK(tunpipe_engine_stop(e) == TUNPIPE_OK, "tunpipe_engine_stop");
        printf("tunpipe_engine_stop with the WireGuard tunnel up: %.2f ms\n", now_ms() - at);
        struct TunpipeStats s;
        memset(&s, 0, sizeof s);
        s.size = sizeof s;
        CHECK(tunpipe_engine_stats(e, &s) == TUNPIPE_OK, "engine stats");
        t = tunnel_stats_of(e);
        check_tunnel_after_stop(t, s, "handle");
        check_peers_after_stop(e, t, peer_key, "handle");
        CHECK(tunpipe_engine_rebind(e) == TUNPIPE_ERR_NOT_RUNNING, "rebind after stop");
        CHECK(tunpipe_engine_suspend(e) == TUNPIPE_ERR_NOT_RUNNING, "suspend after stop");
        tunpipe_engine_free(e);
    }
    CHECK(fd_is_open(fd), "the fd stays open after the handle's stop");

    /* An engine without a tunnel has nothing to rebind, and no figures of one. */
    tunpipe_config_default(&c);
    CHECK(tunpipe_set_config(&c) == TUNPIPE_OK, "back to the defaults");
    e = NULL;
    CHECK(tunpipe_engine_start(&c, fd, &e) == TUNPIPE_OK, "a reflecting engine");
    if (e) {
        CHECK(tunpipe_engine_rebind(e) == TUNPIPE_ERR_UNSUPPORTED, "rebind without a tunnel");
        CHECK(tunpipe_engine_disable_roaming(e) == TUNPIPE_ERR_UNSUPPORTED,
              "no roaming to disable without a tunnel");
        memset(&t, 0, sizeof t);
        t.size = sizeof t;
        CHECK(tunpipe_engine_tunnel_stats(e, &t) == TUNPIPE_ERR_UNSUPPORTED, "no tunnel stats");
        struct TunpipePeerStats p;
        CHECK(peer_stats_of(e, 0, &p) == TUNPIPE_ERR_UNSUPPORTED, "no peer stats");
        tunpipe_engine_free(e);
    }
down:
    if (fd >= 0) close(fd);
    snprintf(cmd, sizeof cmd, "bash %s down %s; rm -rf %s", peer_script, dir, dir);
    if (system(cmd) != 0) fprintf(stderr, "could not take the peer down\n");
}

int main(void) {
    /* A hang (a stop that never returns) fails the run instead of stalling CI. */
    alarm(300);
    CHECK(tunpipe_set_log_callback(on_log, TUNPIPE_LOG_WARN, NULL) == TUNPIPE_OK, "log callback");
    int have_netns = geteuid() == 0 && unshare(CLONE_NEWNET) == 0;

    test_null_pointers();
    test_no_tun_needed();

    if (!have_netns) {
        printf("SKIPPED: the real-TUN part needs root (unshare(CLONE_NEWNET), TUNSETIFF)\n");
        skipped++;
    } else {
        int fd = open_tun("tp0");
        CHECK(fd >= 0, "open a TUN: %s", strerror(errno));
        int up = system("ip link set lo up && ip link set tp0 up && "
                        "ip addr add 10.77.0.1/24 dev tp0");
        CHECK(up == 0, "configure tp0");
        if (fd >= 0 && up == 0) {
            test_start_tun(fd);
            test_handles(fd);
            test_slow_callback_at_stop(fd);
            test_nonblock_cleared(fd);
            test_latency_crowd(fd);
            close(fd);
        }
        const char *peer_script = getenv("TUNPIPE_WG_PEER");
        test_wireguard(peer_script ? peer_script : "ffi/tests/wg_peer.sh");
    }
    tunpipe_set_log_callback(NULL, TUNPIPE_LOG_OFF, NULL);
    if (skipped)
        printf("C host tests: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else
        printf("C host tests: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
