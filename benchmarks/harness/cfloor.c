/* The C floor: floor_server.py's work with no Python and no uvloop, for comparison.
 *
 * One epoll loop (level-triggered, one read per ready socket per wakeup, as libuv does) serves every
 * connection: any login is accepted; logins, the info message and pings get 200, other frames nothing;
 * HARDWARE frames are counted, nothing is parsed further or stored. What floor_server.py costs above
 * this is the price of uvloop and one Python callback per read; what this costs is the kernel's part
 * and a loop that does next to nothing, the least any server on these sockets can spend.
 *
 *     cfloor PORT [COUNT_FILE]
 *
 * With COUNT_FILE, the HARDWARE frames received so far are written there (replaced whole) four times a
 * second: the harness's processed count for the telemetry scenario. Built by the harness like telegen.c.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HARDWARE 20
#define MAX_EVENTS 256
#define COUNT_EVERY_MS 250

static unsigned long long hardware_frames;

static int answered(unsigned char command) {
    return command == 2 || command == 6 || command == 17 || command == 29; /* LOGIN, PING, INTERNAL, HW_LOGIN */
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_count(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fh = fopen(tmp, "w");
    if (!fh) return;
    fprintf(fh, "%llu", hardware_frames);
    fclose(fh);
    rename(tmp, path); /* a reader sees the old count or the new one, never half of one */
}

/* The answers to the whole frames of one read (the harness never splits one), as floor_server.py. */
static void handle(int fd, const unsigned char *data, ssize_t n) {
    unsigned char out[4096];
    size_t used = 0;
    ssize_t pos = 0;
    while (pos + 5 <= n) {
        unsigned char command = data[pos];
        if (command == HARDWARE) {
            hardware_frames++;
        } else if (answered(command) && used + 5 <= sizeof out) {
            unsigned char answer[5] = {0, data[pos + 1], data[pos + 2], 0, 200};
            memcpy(out + used, answer, 5);
            used += 5;
        }
        pos += command == 0 ? 5 : 5 + ((data[pos + 3] << 8) | data[pos + 4]);
    }
    if (used && write(fd, out, used) < 0 && errno != EAGAIN) close(fd);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: cfloor PORT [COUNT_FILE]\n");
        return 2;
    }
    const char *count_file = argc > 2 ? argv[2] : NULL;
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("cfloor: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[MAX_EVENTS];
    static unsigned char buf[4096]; /* one receive buffer for all connections, as blynk-server does */
    long long next_count = now_ms();
    for (;;) {
        int timeout = -1;
        if (count_file) {
            long long now = now_ms();
            if (now >= next_count) {
                write_count(count_file);
                next_count = now + COUNT_EVERY_MS;
            }
            timeout = (int)(next_count - now);
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, timeout);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as uvloop's TCP transports */
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            ssize_t got = read(fd, buf, sizeof buf);
            if (got > 0) {
                handle(fd, buf, got);
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(fd); /* closing removes it from the epoll set */
            }
        }
    }
}
