/* What the C host tests (host_test.c, wgkit_test.c) share: time, an fd's state, and a TUN of
 * their own. Included after the system headers each test needs (fcntl, ioctl, linux/if_tun,
 * string, time, unistd). */
#ifndef TUNPIPE_TESTS_RIG_H
#define TUNPIPE_TESTS_RIG_H

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int fd_is_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

/* A new TUN named `name` (no packet-information header), or -1. */
static int open_tun(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#endif
