/* telegen: the harness's C load generator for the telemetry and ping-pong main loads (Blynk binary or
 * MQTT 3.1.1).
 *
 * Why C: a Python sender spends ~10 us per message in transport.write, so at 100k msg/s the generator
 * saturates the machine it shares with the server under test. Here a message is one send() from a
 * prebuilt buffer: no allocation, no per-message bookkeeping beyond counters.
 *
 * The harness (benchmarks/harness/telegen.py) stays the one place that defines the wire bytes: it
 * passes the login packet of every device (a file, one hex line per device: HW_LOGIN frame or MQTT
 * CONNECT), the Blynk info frame and the telemetry frame (hex). This program only splits what the server
 * sends (Blynk 5-byte headers, MQTT fixed headers), answers a server PING like a real device, and paces.
 *
 *   telegen HOST PORT blynk|mqtt LOGINFILE RATE DURATION FRAMEHEX
 *           [--info HEX] [--concurrency N] [--drain S] [--login-timeout S] [--tick S] [--pingpong 1]
 *
 * Protocol with the harness (stdin/stdout, one line each):
 *   1. connects every device (at most --concurrency logins in flight), then prints one JSON line with
 *      "ready": the login counts, latencies (s), error samples, wall-clock start and end;
 *   2. waits for "go [DURATION]" on stdin (reading the sockets meanwhile), then sends each logged-in
 *      device's frame every 1/RATE s, spread evenly over the period (round robin in ticks of --tick s;
 *      more than two rounds behind: the excess is skipped and counted, never burst);
 *      With --pingpong 1, FRAMEHEX is a PING (Blynk; its answer is the RESPONSE with its msg id, of any
 *      status, a non-200 one also counted) or PINGREQ (MQTT) and RATE is unused: each device sends it,
 *      and sends it again as soon as the answer comes, for the whole window (a Python sender, ~10 us
 *      per ping, set the pace of both servers at 1,000 connections); the answers received in the
 *      window are counted and the first MAX_RTTS round trips kept;
 *   3. keeps reading for --drain s and prints one JSON line with the counts (those of this window;
 *      dropped connections, frames received and statuses since the start), then holds the connections
 *      until the next "go" (another window: the harness's --rounds) or until "close" or the end of
 *      stdin, then writes what the kernel refused earlier (at most 10 s), closes them and exits.
 * Every device keeps being read throughout, so the server never sees a slow reader.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEVICES 1000000
#define MAX_PACKET 4096     /* a login packet, the info frame, the telemetry frame */
#define REP_BYTES 16384     /* the telemetry frame repeated: a backlog is written from here */
#define MAX_EVENTS 1024
#define STDIN_TAG UINT32_MAX
#define MAX_STATUSES 32
#define MAX_SAMPLES 5
#define BLYNK_RESPONSE 0
#define BLYNK_PING 6
#define BLYNK_HARDWARE 20
#define LOGIN_MSG_ID 1      /* the login frame's msg id (engine.py's login_packet) */
#define MQTT_CONNACK 2
#define MQTT_PINGRESP 13
#define MAX_RTTS 200000     /* round trips kept for the percentiles: the first ones, as the Python senders */

enum { S_NEW, S_CONNECTING, S_LOGIN, S_READY, S_CLOSED };

typedef struct {
    int fd;
    uint8_t state;
    uint8_t hlen;      /* header bytes gathered so far */
    uint8_t hdr[5];    /* Blynk header, or MQTT first byte + remaining-length varint */
    uint8_t capture;   /* MQTT CONNACK: the body's bytes are kept in cap[] */
    uint8_t cap[2];
    uint8_t caplen;
    uint8_t out_armed; /* EPOLLOUT registered (a backlog to write) */
    uint8_t pong_owed;
    uint16_t pong_id;
    uint32_t skip;     /* body bytes of the current packet still to read */
    uint32_t login;    /* offset of this device's login packet in logins[] */
    uint16_t login_len;
    uint64_t backlog;  /* bytes of the repeated frame stream not yet accepted by the kernel */
    double t0;         /* connect() time, for the login latency */
    double ping_t;     /* ping-pong: when the unanswered ping went (0: none) */
} device;

static int mqtt;
static device *devs;
static uint32_t ndev;
static uint8_t *logins;
static int ep;
static uint8_t frame[MAX_PACKET], info[MAX_PACKET], rep[REP_BYTES];
static size_t flen, ilen, replen;
static double login_timeout = 30, drain = 1.0, tick = 0.01;
static uint32_t concurrency = 500, inflight;
static struct sockaddr_in addr;

/* results */
static uint64_t sent, skipped, dropped, hw_received, blocked; /* blocked: frames the kernel refused at once */
static int pingpong, pinging;  /* ping-pong mode; its window is open */
static unsigned ping_id;       /* ping-pong, Blynk: the msg id of FRAMEHEX, the PING */
static uint64_t pongs;
static double *rtts;
static uint32_t nrtts;
static uint32_t logged_in, login_errors, nsamples;
static char samples[MAX_SAMPLES][96];
static double *lat;
static int statuses[MAX_STATUSES][2], nstatuses;
static int closing, go_requested, close_requested;
static double go_duration = -1;
static char line[256];
static size_t line_len;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *msg) {
    fprintf(stderr, "telegen: %s\n", msg);
    exit(2);
}

static int unhex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode hex text (stops at a non-hex character); returns the byte count or -1 when odd or too long. */
static long from_hex(const char *s, uint8_t *out, size_t cap) {
    size_t n = 0;
    while (unhex(s[0]) >= 0) {
        if (unhex(s[1]) < 0 || n >= cap) return -1;
        out[n++] = (uint8_t)(unhex(s[0]) << 4 | unhex(s[1]));
        s += 2;
    }
    return (long)n;
}

static void load_logins(const char *path) {
    FILE *fh = fopen(path, "r");
    if (!fh) die("cannot open the login file");
    size_t cap = 1 << 16, used = 0;
    uint32_t devcap = 1024;
    logins = malloc(cap);
    devs = calloc(devcap, sizeof(device));
    static char text[2 * MAX_PACKET + 4];
    uint8_t pkt[MAX_PACKET];
    while (fgets(text, sizeof text, fh)) {
        long n = from_hex(text, pkt, sizeof pkt);
        if (n <= 0) die("bad line in the login file (hex, one packet per line)");
        if (ndev >= MAX_DEVICES) die("too many devices");
        if (ndev == devcap) {
            devcap *= 2;
            devs = realloc(devs, devcap * sizeof(device));
        }
        while (used + (size_t)n > cap) logins = realloc(logins, cap *= 2);
        if (!logins || !devs) die("out of memory");
        memcpy(logins + used, pkt, (size_t)n);
        memset(&devs[ndev], 0, sizeof(device));
        devs[ndev].fd = -1;
        devs[ndev].login = (uint32_t)used;
        devs[ndev].login_len = (uint16_t)n;
        used += (size_t)n;
        ndev++;
    }
    fclose(fh);
    lat = malloc((ndev + 1) * sizeof(double));
    rtts = malloc(MAX_RTTS * sizeof(double));
    if (!lat || !rtts) die("out of memory");
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)ndev + 64)
        fprintf(stderr, "telegen: RLIMIT_NOFILE %lu is below %u devices\n", (unsigned long)rl.rlim_cur, ndev);
}

static void note_error(const char *what, int err) {
    login_errors++;
    if (nsamples < MAX_SAMPLES)
        snprintf(samples[nsamples++], sizeof samples[0], "%s%s%s", what, err ? ": " : "", err ? strerror(err) : "");
}

static void close_dev(device *d) {
    if (d->fd >= 0) close(d->fd); /* also leaves the epoll set */
    d->fd = -1;
    d->state = S_CLOSED;
}

/* The connection ended or failed. Before the login answer it is a login error; after, a drop. */
static void lost(device *d, const char *what, int err) {
    if (d->state == S_CLOSED) return;
    if (d->state == S_READY) {
        if (!closing) dropped++;
    } else {
        note_error(what, err);
        inflight--;
    }
    close_dev(d);
}

static void set_events(device *d, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(d - devs)};
    epoll_ctl(ep, EPOLL_CTL_MOD, d->fd, &ev);
}

/* Whole small packets on a fresh or idle socket (login, info, pong): anything short is a failure. */
static int send_small(device *d, const uint8_t *p, size_t n) {
    return send(d->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)n;
}

static void send_pong(device *d) {
    uint8_t r[5] = {BLYNK_RESPONSE, (uint8_t)(d->pong_id >> 8), (uint8_t)d->pong_id, 0, 200}; /* RESPONSE 200 */
    d->pong_owed = 0;
    if (!send_small(d, r, sizeof r)) lost(d, "pong", errno);
}

static void send_ping(device *d, double now) {
    d->ping_t = now;
    sent++;
    if (!send_small(d, frame, flen)) lost(d, "ping", errno);
}

/* The answer to this device's ping: counted while the window is open, and the next ping goes. */
static void on_pong(device *d) {
    if (!d->ping_t) return;
    if (!pinging) {
        d->ping_t = 0;
        return;
    }
    double now = mono();
    pongs++;
    if (nrtts < MAX_RTTS) rtts[nrtts++] = now - d->ping_t;
    send_ping(d, now);
}

static void login_done(device *d) {
    if (mqtt == 0 && ilen && !send_small(d, info, ilen)) {
        lost(d, "info", errno);
        return;
    }
    lat[logged_in++] = mono() - d->t0;
    inflight--;
    d->state = S_READY;
}

static void login_failed(device *d, const char *why) {
    note_error(why, 0);
    inflight--;
    close_dev(d);
}

static void bad_status(int status) {
    for (int i = 0; i < nstatuses; i++)
        if (statuses[i][0] == status) {
            statuses[i][1]++;
            return;
        }
    if (nstatuses < MAX_STATUSES - 1 || (nstatuses < MAX_STATUSES && status == -1)) {
        statuses[nstatuses][0] = status;
        statuses[nstatuses++][1] = 1;
    } else {
        bad_status(-1); /* more distinct statuses than slots: lumped under -1 (the last slot) */
    }
}

/* One complete Blynk header (RESPONSE carries its status where the length would be, and no body). */
static void blynk_header(device *d) {
    int cmd = d->hdr[0];
    unsigned id = (unsigned)d->hdr[1] << 8 | d->hdr[2];
    unsigned len = (unsigned)d->hdr[3] << 8 | d->hdr[4];
    if (cmd == BLYNK_RESPONSE) {
        if (d->state == S_LOGIN && id == LOGIN_MSG_ID) {
            if (len == 200)
                login_done(d);
            else {
                char why[32];
                snprintf(why, sizeof why, "login status %u", len);
                login_failed(d, why);
            }
        } else {
            if (len != 200) bad_status((int)len);
            if (pingpong && id == ping_id) on_pong(d); /* a QUOTA_LIMIT answers it too: never a stall */
        }
        return;
    }
    if (cmd == BLYNK_PING) { /* answer like a real device; after any backlog, at a frame boundary */
        d->pong_id = (uint16_t)id;
        if (d->backlog)
            d->pong_owed = 1;
        else
            send_pong(d);
    } else if (cmd == BLYNK_HARDWARE) {
        hw_received++;
    }
    d->skip = len;
}

/* The end of an MQTT packet whose body we kept (CONNACK: return code in its second byte). */
static void mqtt_packet(device *d) {
    d->capture = 0;
    if (d->state != S_LOGIN) return;
    if (d->caplen == 2 && d->cap[1] == 0)
        login_done(d);
    else
        login_failed(d, "CONNACK refused");
}

static void on_bytes(device *d, const uint8_t *p, size_t n) {
    while (n && d->state != S_CLOSED) {
        if (d->skip) {
            size_t take = d->skip < n ? d->skip : n;
            if (d->capture)
                for (size_t i = 0; i < take && d->caplen < 2; i++) d->cap[d->caplen++] = p[i];
            d->skip -= (uint32_t)take;
            p += take;
            n -= take;
            if (!d->skip && d->capture) mqtt_packet(d);
            continue;
        }
        d->hdr[d->hlen++] = *p++;
        n--;
        if (!mqtt) {
            if (d->hlen == 5) {
                d->hlen = 0;
                blynk_header(d);
            }
            continue;
        }
        if (d->hlen == 1 || d->hdr[d->hlen - 1] & 0x80) { /* the varint goes on */
            if (d->hlen == 5) lost(d, "bad MQTT length", 0);
            continue;
        }
        uint32_t len = 0, mult = 1;
        for (int i = 1; i < d->hlen; i++, mult <<= 7) len += (d->hdr[i] & 0x7Fu) * mult;
        int type = d->hdr[0] >> 4;
        d->hlen = 0;
        d->skip = len;
        if (type == MQTT_PINGRESP && pingpong) on_pong(d);
        if (type == MQTT_CONNACK) {
            d->capture = 1;
            d->caplen = 0;
            if (!len) mqtt_packet(d);
        }
    }
}

static void on_readable(device *d) {
    static uint8_t buf[65536];
    ssize_t n = recv(d->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0)
        on_bytes(d, buf, (size_t)n);
    else if (n == 0)
        lost(d, "connection closed before login", 0);
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        lost(d, "recv", errno);
}

/* Write what the kernel refused earlier: the frame stream is periodic, so the backlog is a byte count. */
static void flush_backlog(device *d) {
    while (d->backlog) {
        size_t pos = (flen - d->backlog % flen) % flen;
        size_t len = replen - pos;
        if (len > d->backlog) len = (size_t)d->backlog;
        ssize_t w = send(d->fd, rep + pos, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
            lost(d, "send", errno);
            return;
        }
        d->backlog -= (uint64_t)w;
    }
    d->out_armed = 0;
    set_events(d, EPOLLIN);
    if (d->pong_owed) send_pong(d);
}

static inline void send_frame(device *d) {
    sent++;
    if (d->backlog) {
        d->backlog += flen;
        return;
    }
    ssize_t w = send(d->fd, frame, flen, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w == (ssize_t)flen) return;
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            sent--;
            lost(d, "send", errno);
            return;
        }
        w = 0;
    }
    blocked++;
    d->backlog = flen - (size_t)w;
    d->out_armed = 1;
    set_events(d, EPOLLIN | EPOLLOUT);
}

static void on_connected(device *d) {
    int err = 0;
    socklen_t sl = sizeof err;
    if (getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0) err = errno;
    if (err) {
        lost(d, "connect", err);
        return;
    }
    if (!send_small(d, logins + d->login, d->login_len)) {
        lost(d, "login send", errno);
        return;
    }
    d->state = S_LOGIN;
    set_events(d, EPOLLIN);
}

static void start_connect(device *d) {
    d->t0 = mono();
    inflight++;
    d->state = S_CONNECTING;
    d->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->fd < 0) {
        lost(d, "socket", errno);
        return;
    }
    int one = 1;
    setsockopt(d->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as asyncio's transports do */
    if (connect(d->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        lost(d, "connect", errno);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(d - devs)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, d->fd, &ev) < 0) lost(d, "epoll", errno);
}

static void on_stdin(void) {
    char buf[256];
    ssize_t n = read(0, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { /* the harness went away */
        close_requested = 1;
        epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] != '\n') {
            if (line_len < sizeof line - 1) line[line_len++] = buf[i];
            continue;
        }
        line[line_len] = 0;
        line_len = 0;
        if (strncmp(line, "go", 2) == 0) {
            go_requested = 1;
            if (line[2] == ' ') go_duration = atof(line + 3);
        } else if (strcmp(line, "close") == 0) {
            close_requested = 1;
        }
    }
}

/* One epoll_wait and its events. */
static void poll_once(int timeout_ms) {
    static struct epoll_event evs[MAX_EVENTS];
    int k = epoll_wait(ep, evs, MAX_EVENTS, timeout_ms);
    for (int i = 0; i < k; i++) {
        uint32_t tag = evs[i].data.u32, e = evs[i].events;
        if (tag == STDIN_TAG) {
            on_stdin();
            continue;
        }
        device *d = &devs[tag];
        if (d->state == S_CLOSED) continue;
        if (d->state == S_CONNECTING) {
            if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(d);
            continue;
        }
        if (e & EPOLLIN)
            on_readable(d);
        else if (e & (EPOLLERR | EPOLLHUP))
            lost(d, "connection error", 0);
        if ((e & EPOLLOUT) && d->state == S_READY && d->out_armed) flush_backlog(d);
    }
}

static int ms_until(double t) {
    double dt = t - mono();
    return dt <= 0 ? 0 : (int)(dt * 1000) + 1; /* rounded up: never wake before t */
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The harness's pct(): the value at round(p/100 * (n-1)) of the sorted list. */
static double pct(const double *sorted, uint32_t n, double p) {
    return sorted[(uint32_t)(p / 100 * (n - 1) + 0.5)];
}

static void print_errors(void) {
    printf("[");
    for (uint32_t i = 0; i < nsamples; i++) printf("%s\"%s\"", i ? "," : "", samples[i]);
    printf("]");
}

int main(int argc, char **argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: telegen HOST PORT blynk|mqtt LOGINFILE RATE DURATION FRAMEHEX [--info HEX] "
                        "[--concurrency N] [--drain S] [--login-timeout S] [--tick S]\n");
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) die("HOST must be an IPv4 address");
    if (strcmp(argv[3], "mqtt") == 0)
        mqtt = 1;
    else if (strcmp(argv[3], "blynk") != 0)
        die("protocol must be blynk or mqtt");
    double rate = atof(argv[5]), duration = atof(argv[6]);
    long n = from_hex(argv[7], frame, sizeof frame);
    if (n <= 0) die("FRAMEHEX must be the frame's bytes in hex");
    flen = (size_t)n;
    ping_id = flen >= 3 ? (unsigned)frame[1] << 8 | frame[2] : 0;
    for (int i = 8; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--info") == 0) {
            n = from_hex(argv[i + 1], info, sizeof info);
            if (n < 0) die("--info must be hex");
            ilen = (size_t)n;
        } else if (strcmp(argv[i], "--concurrency") == 0) {
            concurrency = (uint32_t)atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--drain") == 0) {
            drain = atof(argv[i + 1]);
        } else if (strcmp(argv[i], "--login-timeout") == 0) {
            login_timeout = atof(argv[i + 1]);
        } else if (strcmp(argv[i], "--tick") == 0) {
            tick = atof(argv[i + 1]);
        } else if (strcmp(argv[i], "--pingpong") == 0) {
            pingpong = atoi(argv[i + 1]) != 0;
        } else {
            die("unknown option");
        }
    }
    if (!(rate > 0) || !(duration >= 0) || !(tick > 0) || !(drain >= 0) || !(login_timeout > 0)) die("bad number");
    if (!concurrency) concurrency = UINT32_MAX;
    for (replen = 0; replen + flen <= REP_BYTES; replen += flen) memcpy(rep + replen, frame, flen);
    load_logins(argv[4]);
    raise_nofile();

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);

    /* 1. logins, at most `concurrency` in flight, each bounded by login_timeout */
    double t_connect = wall(), next_scan = mono() + 0.1;
    uint32_t next = 0;
    while ((next < ndev || inflight) && !close_requested) {
        while (next < ndev && inflight < concurrency) start_connect(&devs[next++]);
        poll_once(100);
        double now = mono();
        if (now >= next_scan) {
            next_scan = now + 0.1;
            for (uint32_t i = 0; i < next; i++) {
                device *d = &devs[i];
                if ((d->state == S_CONNECTING || d->state == S_LOGIN) && now - d->t0 > login_timeout)
                    login_failed(d, "login timeout");
            }
        }
    }
    double t_all = wall();
    printf("{\"ready\":true,\"logged_in\":%u,\"errors\":%u,\"error_samples\":", logged_in, login_errors);
    print_errors();
    printf(",\"t_connect\":%.6f,\"t_all\":%.6f,\"login_lat\":[", t_connect, t_all);
    for (uint32_t i = 0; i < logged_in; i++) printf("%s%.6f", i ? "," : "", lat[i]);
    printf("]}\n");
    fflush(stdout);

    uint32_t *live = malloc((logged_in + 1) * sizeof(uint32_t));
    if (!live) die("out of memory");
    for (;;) { /* one window per "go", until "close" */
        /* 2. wait for "go", reading the sockets meanwhile */
        while (!go_requested && !close_requested) poll_once(1000);
        if (close_requested) break;
        go_requested = 0;
        if (go_duration >= 0) duration = go_duration;
        sent = skipped = pongs = blocked = 0; /* per window; dropped, hw_received and the statuses add up */
        nrtts = 0;
        uint32_t nlive = 0;
        for (uint32_t i = 0; i < ndev; i++)
            if (devs[i].state == S_READY) live[nlive++] = i;

        /* 3. the window: ping-pong (each answer sends the next ping), or paced (Worker._telemetry's semantics) */
        double start = mono(), deadline = start + duration, next_tick = start, per_sec = nlive * rate;
        uint64_t issued = 0, idx = 0;
        if (pingpong) {
            pinging = 1;
            for (uint32_t i = 0; i < nlive; i++)
                if (devs[live[i]].state == S_READY) send_ping(&devs[live[i]], mono());
            while (!close_requested && mono() < deadline) poll_once(ms_until(deadline));
            pinging = 0;
        } else while (!close_requested && nlive) {
            double now = mono();
            if (now >= deadline) break;
            uint64_t due = (uint64_t)((now - start) * per_sec) - issued;
            issued += due;
            uint64_t k = due < 2ull * nlive ? due : 2ull * nlive; /* more than two rounds behind: skip, never burst */
            skipped += due - k;
            for (uint64_t j = 0; j < k; j++) {
                device *d = &devs[live[idx]];
                idx = idx + 1 < nlive ? idx + 1 : 0;
                if (d->state == S_READY) send_frame(d);
            }
            next_tick += tick;
            if (next_tick < now) next_tick = now + tick;
            int wait = ms_until(next_tick < deadline ? next_tick : deadline);
            do
                poll_once(wait);
            while (!close_requested && (wait = ms_until(next_tick < deadline ? next_tick : deadline)) > 0);
        }
        double elapsed = mono() - start;
        double drain_end = mono() + drain;
        while (!close_requested && mono() < drain_end) poll_once(ms_until(drain_end));

        uint32_t alive = 0;
        for (uint32_t i = 0; i < ndev; i++) alive += devs[i].state == S_READY;
        qsort(lat, logged_in, sizeof(double), cmp_double);
        printf("{\"sent\":%llu,\"skipped\":%llu,\"elapsed\":%.6f,\"dropped\":%llu,\"alive\":%u,\"hw_received\":%llu,"
               "\"blocked\":%llu,\"bad_status\":{",
               (unsigned long long)sent, (unsigned long long)skipped, elapsed, (unsigned long long)dropped, alive,
               (unsigned long long)hw_received, (unsigned long long)blocked);
        for (int i = 0; i < nstatuses; i++) printf("%s\"%d\":%d", i ? "," : "", statuses[i][0], statuses[i][1]);
        printf("},\"pongs\":%llu,\"rtts\":[", (unsigned long long)pongs);
        for (uint32_t i = 0; i < nrtts; i++) printf("%s%.7f", i ? "," : "", rtts[i]);
        printf("],\"logged_in\":%u,\"login_errors\":%u,\"login_error_samples\":", logged_in, login_errors);
        print_errors();
        if (logged_in)
            printf(",\"login_p50_ms\":%.3f,\"login_p99_ms\":%.3f", pct(lat, logged_in, 50) * 1e3,
                   pct(lat, logged_in, 99) * 1e3);
        printf(",\"login_wall_s\":%.3f}\n", t_all - t_connect);
        fflush(stdout);
    }

    /* 4. "close" (or the end of stdin): close the connections */
    closing = 1;
    double flush_end = mono() + 10; /* what was counted as sent reaches the kernel before the close */
    for (int owed = 1; owed && mono() < flush_end;) {
        owed = 0;
        for (uint32_t i = 0; i < ndev && !owed; i++) owed = devs[i].state == S_READY && devs[i].backlog;
        if (owed) poll_once(ms_until(flush_end));
    }
    for (uint32_t i = 0; i < ndev; i++) close_dev(&devs[i]);
    return 0;
}
