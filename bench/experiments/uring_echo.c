// What io_uring would save on this machine: CPU per request of an echo server (recv one
// request, send one answer, 64 keep-alive connections on loopback) with epoll + recv/send
// system calls, and with io_uring (one io_uring_enter per loop turn for every socket).
// A measurement for deciding on an io_uring poller for fastgw, not part of the product.
//
//   apt-get install liburing-dev && gcc -O2 -o /tmp/uring_echo bench/experiments/uring_echo.c -luring
//   /tmp/uring_echo epoll 3; /tmp/uring_echo uring 3; SYNCSEND=1 /tmp/uring_echo uring 3
//   /tmp/uring_echo nested 3    (fastgw's shape: the sockets' epoll set registered in the
//                                loop's, read with epoll_wait(..., 0) when it is readable)
//
// The server runs pinned to core 0, a closed-loop driver (fork) on core 1; the server's
// user+sys time over the measured seconds is divided by the requests it answered.
// SYNCSEND=1: receive through the ring, send with send(2). PLAIN=1: a ring without
// SINGLE_ISSUER | DEFER_TASKRUN.
//
// 2026-11-27, AMD EPYC VM (2 cores, Linux 6.18, SRSO return thunk: ~340 ns a syscall),
// five interleaved pairs each, median µs per request: epoll 5.77 vs io_uring 5.53 (recv and
// send through the ring), epoll 6.36 vs io_uring-recv 6.10 (send(2) kept): ~0.25 µs, ~4%.
// Nested epoll, three sets of 5-8 interleaved pairs: 0 to +0.4 µs a request over one level
// (last set: medians epoll 5.29, nested 5.48 µs; median of the pair differences +0.06).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NC 64
#define REQ 60
#define RESP 180

static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s); sched_setaffinity(0, sizeof s, &s); }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static void driver(int *cfd, double secs, int outfd) {
    pin(1);
    int ep = epoll_create1(0);
    char req[REQ], buf[4096];
    memset(req, 'r', REQ);
    for (int i = 0; i < NC; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cfd[i], &ev);
        send(cfd[i], req, REQ, 0);
    }
    long done = 0; double t0 = now(), end = t0 + secs;
    struct epoll_event evs[64];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 64, 100);
        for (int k = 0; k < n; k++) {
            int i = evs[k].data.u32;
            ssize_t r = recv(cfd[i], buf, sizeof buf, 0);
            if (r > 0) { done++; send(cfd[i], req, REQ, 0); }
        }
    }
    write(outfd, &done, sizeof done);
    _exit(0);
}

int main(int argc, char **argv) {
    int uring = strcmp(argv[1], "uring") == 0;   // else "epoll" or "nested"
    double secs = atof(argv[2]);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(lfd, (void *)&a, sizeof a);
    socklen_t al = sizeof a; getsockname(lfd, (void *)&a, &al);
    listen(lfd, 128);
    int cfd[NC], sfd[NC];
    for (int i = 0; i < NC; i++) {
        cfd[i] = socket(AF_INET, SOCK_STREAM, 0);
        connect(cfd[i], (void *)&a, sizeof a);
        setsockopt(cfd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        sfd[i] = accept(lfd, NULL, NULL);
        setsockopt(sfd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    int pfd[2]; pipe(pfd);
    pid_t kid = fork();
    if (kid == 0) driver(cfd, secs + 1.0, pfd[1]);
    pin(0);
    char resp[RESP]; memset(resp, 'a', RESP);
    static char bufs[NC][4096];
    struct rusage r0, r1;
    long served = 0, measured = 0;
    double tstart = now(), tm0 = tstart + 0.5, tm1 = tstart + 0.5 + secs;
    int measuring = 0;
    if (!uring) {
        int nested = strcmp(argv[1], "nested") == 0;
        int ep = epoll_create1(0);
        int outer = nested ? epoll_create1(0) : ep;
        for (int i = 0; i < NC; i++) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
            epoll_ctl(ep, EPOLL_CTL_ADD, sfd[i], &ev);
        }
        if (nested) {
            struct epoll_event ev = {.events = EPOLLIN};
            epoll_ctl(outer, EPOLL_CTL_ADD, ep, &ev);
        }
        struct epoll_event evs[128];
        for (;;) {
            double t = now();
            if (!measuring && t >= tm0) { getrusage(RUSAGE_SELF, &r0); measured = served; measuring = 1; }
            if (measuring && t >= tm1) { getrusage(RUSAGE_SELF, &r1); measured = served - measured; break; }
            int n = epoll_wait(outer, evs, 128, 100);
            if (nested && n > 0) n = epoll_wait(ep, evs, 128, 0);
            for (int k = 0; k < n; k++) {
                int i = evs[k].data.u32;
                ssize_t r = recv(sfd[i], bufs[i], 4096, 0);
                if (r > 0) { send(sfd[i], resp, RESP, MSG_NOSIGNAL); served++; }
            }
        }
    } else {
        struct io_uring ring;
        struct io_uring_params p = {0};
        p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
        if (getenv("PLAIN")) p.flags = 0;
        int rc = io_uring_queue_init_params(1024, &ring, &p);
        if (rc < 0) { fprintf(stderr, "io_uring init: %s\n", strerror(-rc)); return 1; }
        for (int i = 0; i < NC; i++) {
            struct io_uring_sqe *s = io_uring_get_sqe(&ring);
            io_uring_prep_recv(s, sfd[i], bufs[i], 4096, 0);
            io_uring_sqe_set_data64(s, i);
        }
        for (;;) {
            double t = now();
            if (!measuring && t >= tm0) { getrusage(RUSAGE_SELF, &r0); measured = served; measuring = 1; }
            if (measuring && t >= tm1) { getrusage(RUSAGE_SELF, &r1); measured = served - measured; break; }
            struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
            struct io_uring_cqe *cqe;
            io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, NULL);
            unsigned head, cnt = 0;
            io_uring_for_each_cqe(&ring, head, cqe) {
                cnt++;
                unsigned long long d = cqe->user_data;
                if (d >= 1000) continue;                 // a send's completion
                int i = (int)d;
                if (cqe->res > 0) {
                    if (getenv("SYNCSEND")) {
                        send(sfd[i], resp, RESP, MSG_NOSIGNAL);
                    } else {
                        struct io_uring_sqe *s = io_uring_get_sqe(&ring);
                        io_uring_prep_send(s, sfd[i], resp, RESP, MSG_NOSIGNAL);
                        io_uring_sqe_set_data64(s, 1000 + i);
                    }
                    served++;
                }
                struct io_uring_sqe *s = io_uring_get_sqe(&ring);
                io_uring_prep_recv(s, sfd[i], bufs[i], 4096, 0);
                io_uring_sqe_set_data64(s, i);
            }
            io_uring_cq_advance(&ring, cnt);
        }
    }
    double u = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6;
    double s = (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
    printf("%-6s %8.0f req/s  user %.2f us/req  sys %.2f us/req  total %.2f us/req\n", argv[1],
           measured / secs, u / measured * 1e6, s / measured * 1e6, (u + s) / measured * 1e6);
    kill(kid, SIGKILL); waitpid(kid, NULL, 0);
    return 0;
}
