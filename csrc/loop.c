/* loop.c: the data path in a thread of its own (issue 10, "C data-path thread").
 *
 * ovl_runner_run() is a blocking event loop: poll() on the TAP, the receiving socket and the
 * runner's eventfd, and per readiness one batch of the same driver functions the Python loop
 * calls (ovl_from_tap / ovl_from_tunnel), with the clock read from CLOCK_MONOTONIC once per
 * batch (what Python's time.monotonic() reads, so FDB ages agree with what Python computes).
 *
 * Control is stop-the-world: ovl_runner_pause() asks the loop to park between two batches and
 * waits until it has; until the matching ovl_runner_resume() the caller may read and change the
 * context freely, so the context and its MAC table need no locks of their own. A loop that is
 * not running (no thread inside ovl_runner_run) parks as soon as it enters, so a pause is also
 * valid while the thread is between two runs. Pauses nest and may come from several threads.
 *
 * The loop never calls back into Python; it returns: OVL_RUN_STOPPED after ovl_runner_stop(),
 * OVL_RUN_TAP_ERROR / OVL_RUN_RECV_ERROR with the errno of a failed read (the frames of that
 * batch read before it were forwarded), OVL_RUN_FAILED when poll() itself fails. The caller
 * decides (log, stop reading a dead TAP) and calls it again. */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

struct ovl_runner {
    pthread_mutex_t mu;
    pthread_cond_t cv;    /* parked changed, active changed, pause_req back to 0, stop */
    int efd;              /* eventfd: wakes the loop's poll() */
    atomic_uint pending;  /* pause_req + stop: the loop looks at the rest (under mu) only when non-zero */
    uint32_t pause_req;   /* pauses not yet resumed */
    int stop;             /* set by ovl_runner_stop, cleared by ovl_runner_rearm */
    int active;           /* a thread is inside ovl_runner_run */
    int parked;           /* ... and waits in park(): it touches no context */
    int recv2;            /* issue 11, v6: a second receiving socket (the IPv6 one), or -1 */
};

struct ovl_runner *ovl_runner_new(void) {
    struct ovl_runner *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->recv2 = -1;
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    atomic_init(&r->pending, 0);
    return r;
}

void ovl_runner_free(struct ovl_runner *r) {
    if (!r)
        return;
    close(r->efd);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void wake(struct ovl_runner *r) {
    uint64_t one = 1;
    ssize_t w = write(r->efd, &one, sizeof(one)); /* EAGAIN: the counter is full, the loop wakes anyway */
    (void)w;
}

/* Under no lock: wait (parked) while a pause is requested; returns 1 if the loop is to stop. */
static int park(struct ovl_runner *r) {
    pthread_mutex_lock(&r->mu);
    while (r->pause_req && !r->stop) {
        if (!r->parked) {
            r->parked = 1;
            pthread_cond_broadcast(&r->cv);
        }
        pthread_cond_wait(&r->cv, &r->mu);
    }
    r->parked = 0;
    int stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int ovl_runner_run(struct ovl_runner *r, struct ovl_dp *dp, int tap_fd, int recv_fd, int send_fd, int32_t *err) {
    *err = 0;
    pthread_mutex_lock(&r->mu);
    if (r->active) {
        pthread_mutex_unlock(&r->mu);
        *err = EBUSY;
        return OVL_RUN_FAILED;
    }
    r->active = 1;
    pthread_mutex_unlock(&r->mu);
    prctl(PR_SET_NAME, "ovl-dp data"); /* this thread's name in top -H, ps -L, perf */
    /* poll() leaves out an entry with a negative fd: tap_fd -1 = the TAP is not read. */
    struct pollfd pfd[4] = {{r->efd, POLLIN, 0}, {tap_fd, POLLIN, 0}, {recv_fd, POLLIN, 0}, {r->recv2, POLLIN, 0}};
    int ret = OVL_RUN_STOPPED;
    for (;;) {
        if (atomic_load_explicit(&r->pending, memory_order_acquire) && park(r))
            break;
        int n = poll(pfd, 4, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            ret = OVL_RUN_FAILED;
            break;
        }
        if (pfd[0].revents) { /* a control request: look at it before the next batch */
            uint64_t v;
            ssize_t got = read(r->efd, &v, sizeof(v));
            (void)got;
            continue;
        }
        if (pfd[1].revents) {
            ovl_from_tap(dp, tap_fd, send_fd, monotonic_now());
            if (dp->io_errno) {
                *err = dp->io_errno;
                ret = OVL_RUN_TAP_ERROR;
                break;
            }
        }
        if (pfd[2].revents) {
            ovl_from_tunnel(dp, recv_fd, tap_fd, monotonic_now());
            if (dp->io_errno) {
                *err = dp->io_errno;
                ret = OVL_RUN_RECV_ERROR;
                break;
            }
        }
        if (pfd[3].revents) { /* issue 11, v6: the IPv6 receiving socket */
            ovl_from_tunnel(dp, r->recv2, tap_fd, monotonic_now());
            if (dp->io_errno) {
                *err = dp->io_errno;
                ret = OVL_RUN_RECV_ERROR;
                break;
            }
        }
    }
    pthread_mutex_lock(&r->mu);
    r->active = 0;
    r->parked = 0;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return ret;
}

void ovl_runner_pause(struct ovl_runner *r) {
    pthread_mutex_lock(&r->mu);
    r->pause_req++;
    atomic_fetch_add_explicit(&r->pending, 1, memory_order_release);
    if (r->active && !r->parked)
        wake(r);
    /* A stop does not end the wait: the loop may be in a batch; it parks or leaves after it. */
    while (r->active && !r->parked)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

int ovl_runner_resume(struct ovl_runner *r) {
    int ret = -1;
    pthread_mutex_lock(&r->mu);
    if (r->pause_req) {
        r->pause_req--;
        atomic_fetch_sub_explicit(&r->pending, 1, memory_order_release);
        if (!r->pause_req)
            pthread_cond_broadcast(&r->cv);
        ret = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return ret;
}

void ovl_runner_stop(struct ovl_runner *r) {
    pthread_mutex_lock(&r->mu);
    if (!r->stop) {
        r->stop = 1;
        atomic_fetch_add_explicit(&r->pending, 1, memory_order_release);
    }
    pthread_cond_broadcast(&r->cv); /* a parked loop leaves */
    if (r->active)
        wake(r);
    pthread_mutex_unlock(&r->mu);
}

int ovl_runner_rearm(struct ovl_runner *r) {
    int ret = -1;
    pthread_mutex_lock(&r->mu);
    if (!r->active) {
        if (r->stop) {
            r->stop = 0;
            atomic_fetch_sub_explicit(&r->pending, 1, memory_order_release);
        }
        ret = 0;
    }
    pthread_mutex_unlock(&r->mu);
    return ret;
}

uint32_t ovl_runner_state(struct ovl_runner *r) {
    pthread_mutex_lock(&r->mu);
    uint32_t s = (r->active ? OVL_RUNNER_ACTIVE : 0) | (r->parked ? OVL_RUNNER_PARKED : 0) |
                 (r->stop ? OVL_RUNNER_STOP : 0) | (r->pause_req ? OVL_RUNNER_PAUSED : 0);
    pthread_mutex_unlock(&r->mu);
    return s;
}

void ovl_runner_set_recv2(struct ovl_runner *r, int fd) { r->recv2 = fd < 0 ? -1 : fd; }
