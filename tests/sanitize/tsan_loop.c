/* tsan_loop.c: the data-path loop (csrc/loop.c) under ThreadSanitizer, without Python.
 *
 * (Python itself cannot run with libtsan preloaded on this kernel: it faults at start.)
 * One thread runs ovl_runner_run over a datagram socketpair (the "TAP") and a UDP socket
 * on 127.0.0.1 (the underlay); a sender floods both with VXLAN packets and frames, a
 * drainer reads what the loop writes to the TAP; the main thread pauses the loop again
 * and again and, while paused, reads counters, lists and flushes the FDB, learns an entry,
 * adds and removes a remote; then stops it. TSan reports any access to the context that
 * the pause does not order. Exit 0 and "ok" with the counts; built and run by
 * tests/sanitize/test_tsan.py. */
#define _GNU_SOURCE
#include "ovl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ROUNDS 400

static atomic_int done;
static int tap_pair[2]; /* [0] the loop's TAP end, [1] the test's */
static int recv_fd;
static struct sockaddr_in recv_addr;

struct run_args {
    struct ovl_runner *r;
    struct ovl_dp *dp;
    int rc;
};

static void *run(void *p) {
    struct run_args *a = p;
    int32_t err;
    do
        a->rc = ovl_runner_run(a->r, a->dp, tap_pair[0], recv_fd, -1, &err);
    while (a->rc == OVL_RUN_TAP_ERROR || a->rc == OVL_RUN_RECV_ERROR);
    return NULL;
}

static void *sender(void *p) {
    (void)p;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    uint8_t pkt[8 + 60];
    memset(pkt, 0, sizeof(pkt));
    pkt[0] = 0x08;
    pkt[6] = 99; /* VNI 99 << 8: bytes 4..6 = 0, 0, 99 */
    uint8_t *inner = pkt + 8;
    memcpy(inner, "\x02\x00\x00\x00\x00\x0a", 6);
    inner[6] = 0x02;
    inner[12] = 0x08;
    uint8_t frame[60];
    memset(frame, 0, sizeof(frame));
    memcpy(frame, "\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x0a\x08\x00", 14);
    for (uint32_t n = 0; !atomic_load(&done); n++) {
        inner[11] = (uint8_t)(n % 64 + 1); /* source MACs 02:00:00:00:00:01..40 */
        sendto(s, pkt, sizeof(pkt), MSG_DONTWAIT, (struct sockaddr *)&recv_addr, sizeof(recv_addr));
        if (n % 4 == 0)
            send(tap_pair[1], frame, sizeof(frame), MSG_DONTWAIT);
    }
    close(s);
    return NULL;
}

static void *drainer(void *p) {
    (void)p;
    uint8_t buf[2048];
    while (!atomic_load(&done))
        if (recv(tap_pair[1], buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno == EAGAIN)
            usleep(100);
    return NULL;
}

int main(void) {
    recv_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    recv_addr.sin_family = AF_INET;
    recv_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(recv_addr);
    if (bind(recv_fd, (struct sockaddr *)&recv_addr, sizeof(recv_addr)) ||
        getsockname(recv_fd, (struct sockaddr *)&recv_addr, &alen) ||
        socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, tap_pair)) {
        perror("setup");
        return 2;
    }
    uint8_t lo[OVL_ADDR_LEN] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 127, 0, 0, 1}; /* IPv4 mapped */
    uint8_t lo2[OVL_ADDR_LEN] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 127, 0, 0, 2};
    struct ovl_config *c = ovl_config_new(OVL_ENCAP_VXLAN);
    ovl_config_set_tunnel(c, 99, 1, 64);
    ovl_config_set_udp(c, ntohs(recv_addr.sin_port), 0);
    ovl_config_set_ring(c, 1500, 64, 2048);
    ovl_config_set_fdb(c, 4096, 300.0, 1234);
    ovl_config_set_offloads(c, 0, 0, 0);
    ovl_config_add_remote(c, lo, lo);
    struct ovl_dp *dp = ovl_dp_new(c);
    struct ovl_runner *r = ovl_runner_new();
    if (!dp || !r) {
        fprintf(stderr, "no context or runner\n");
        return 2;
    }
    struct run_args a = {r, dp, -1};
    pthread_t t_run, t_send, t_drain;
    pthread_create(&t_run, NULL, run, &a);
    pthread_create(&t_send, NULL, sender, NULL);
    pthread_create(&t_drain, NULL, drainer, NULL);
    uint64_t stats[OVL_STAT_COUNT], first_tap_tx = 0;
    uint32_t flushed = 0;
    for (int i = 0; i < ROUNDS; i++) {
        ovl_runner_pause(r);
        ovl_runner_pause(r); /* nested */
        ovl_dp_counters(dp, OVL_COUNTERS_STATS, stats, OVL_STAT_COUNT);
        if (i == 0)
            first_tap_tx = stats[OVL_STAT_TAP_TX];
        uint8_t macs[6 * 64];
        uint16_t vlans[64];
        int32_t remotes[64];
        uint8_t statics[64];
        double ages[64];
        ovl_fdb_entries(ovl_dp_fdb(dp), 0.0, macs, vlans, remotes, statics, ages, 64);
        ovl_fdb_learn(ovl_dp_fdb(dp), (const uint8_t *)"\x02\x00\x00\x00\x00\x77", 0, 0, 1.0);
        if (i % 10 == 0)
            flushed += ovl_fdb_flush(ovl_dp_fdb(dp), -1);
        if (i % 20 == 0) {
            int slot = ovl_dp_add_remote(dp, lo2, lo);
            if (slot >= 0)
                ovl_dp_remove_remote(dp, (uint32_t)slot);
        }
        ovl_runner_resume(r);
        ovl_runner_resume(r);
        usleep(500);
    }
    ovl_runner_pause(r);
    ovl_runner_stop(r); /* from inside a pause */
    ovl_runner_resume(r);
    pthread_join(t_run, NULL);
    atomic_store(&done, 1);
    pthread_join(t_send, NULL);
    pthread_join(t_drain, NULL);
    ovl_dp_counters(dp, OVL_COUNTERS_STATS, stats, OVL_STAT_COUNT);
    printf("ok rc=%d tap_tx=%llu (first pause %llu) tap_rx=%llu flushed=%u\n", a.rc,
           (unsigned long long)stats[OVL_STAT_TAP_TX], (unsigned long long)first_tap_tx,
           (unsigned long long)stats[OVL_STAT_TAP_RX], flushed);
    ovl_runner_free(r);
    ovl_dp_free(dp);
    ovl_config_free(c);
    close(recv_fd);
    close(tap_pair[0]);
    close(tap_pair[1]);
    return a.rc == OVL_RUN_STOPPED && stats[OVL_STAT_TAP_TX] > first_tap_tx ? 0 : 1;
}
