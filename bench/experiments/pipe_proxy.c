// The least CPU per request any proxy can spend on this machine: a byte pipe in C that does only the system calls
// a keep-alive HTTP proxy cannot avoid (one recv and one send each way per request, an
// epoll_wait per loop turn) and nothing else: no parsing, no routing, no header rewrite,
// one upstream connection per client connection. Its CPU per request is the kernel's share
// of a request plus almost no user time, so nginx's µs/request over this one's is the most
// any proxy's efficiency can read in the same run. Not part of the product: `bench/run.py
// --proxies fastgw,nginx,pipe --scenarios plain` runs it beside the others (the runner
// builds it with cc); only the plain and POST scenarios apply (it cannot check a key or
// close an upstream connection per request).
//
//   cc -O2 -o /tmp/pipe_proxy bench/experiments/pipe_proxy.c
//   /tmp/pipe_proxy LISTEN_PORT UPSTREAM_PORT
//
// Edge-triggered sockets read as fastgw reads them: once per readiness, again only after a
// full buffer. A send that does not take everything keeps the rest and asks for EPOLLOUT
// (only then, as fastgw does), with the other side's reads paused meanwhile (never seen at
// these sizes).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536

struct side {
    int fd;
    struct side *peer;
    char *pending;          // bytes this side still has to send (its peer's reads wait)
    size_t pending_len;
    int closed;
};

static char buf[BUF];
static int ep;
static struct sockaddr_in upstream;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int fcntl_nonblock(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

static void close_pair(struct side *s) {
    struct side *p = s->peer;
    if (s->closed)
        return;
    s->closed = p->closed = 1;
    close(s->fd);
    close(p->fd);
    free(s->pending);
    free(p->pending);
    // Both sides are freed at the end of the loop turn that closed them (events for the
    // other side may still be in this turn's batch).
}

static struct side *graveyard[4096];
static int ngrave;

// EPOLLOUT is asked for only while a side has bytes it could not send, as fastgw does.
static void want(struct side *s, int out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (out ? EPOLLOUT : 0), .data.ptr = s};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) < 0)
        die("epoll_ctl");
}

static int send_all(struct side *to, const char *data, size_t n) {
    while (n > 0) {
        ssize_t k = send(to->fd, data, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                to->pending = malloc(n);
                if (!to->pending)
                    die("malloc");
                memcpy(to->pending, data, n);
                to->pending_len = n;
                want(to, 1);
                return 0;
            }
            return -1;
        }
        data += k;
        n -= (size_t)k;
    }
    return 0;
}

static void on_readable(struct side *s) {
    for (;;) {
        if (s->peer->pending_len)
            return;                         // paused until the peer's send buffer drains
        ssize_t n = recv(s->fd, buf, BUF, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            close_pair(s);
            return;
        }
        if (n == 0 || send_all(s->peer, buf, (size_t)n) < 0) {
            close_pair(s);
            return;
        }
        if (n < BUF)
            return;
    }
}

static void on_writable(struct side *s) {
    if (!s->pending_len)
        return;
    char *data = s->pending;
    size_t n = s->pending_len;
    s->pending = NULL;
    s->pending_len = 0;
    if (send_all(s, data, n) < 0)
        close_pair(s);
    else if (!s->pending_len)
        want(s, 0);
    free(data);
    if (!s->closed && !s->pending_len)
        on_readable(s->peer);               // resume what waited for this side
}

static void add(struct side *s) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = s};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0)
        die("epoll_ctl");
}

static void on_accept(int lfd) {
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        int u = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        if (u < 0 || connect(u, (struct sockaddr *)&upstream, sizeof upstream) < 0) {
            close(c);
            if (u >= 0)
                close(u);
            continue;
        }
        setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fcntl_nonblock(u) < 0)
            die("fcntl");
        struct side *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
        if (!a || !b)
            die("calloc");
        a->fd = c;
        b->fd = u;
        a->peer = b;
        b->peer = a;
        add(a);
        add(b);
        on_readable(a);                     // bytes that came with the connection
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    upstream = addr;
    upstream.sin_port = htons((uint16_t)atoi(argv[2]));
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1024) < 0)
        die("listen");
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll");
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (s == NULL) {
                on_accept(lfd);
                continue;
            }
            if (s->closed)
                continue;
            if (evs[i].events & EPOLLOUT)
                on_writable(s);
            if (!s->closed && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
                on_readable(s);
            }
            if (s->closed && ngrave < 4094 && s->fd >= 0) {
                graveyard[ngrave++] = s;
                graveyard[ngrave++] = s->peer;
                s->fd = s->peer->fd = -1;
            }
        }
        for (int i = 0; i < ngrave; i++)
            free(graveyard[i]);
        ngrave = 0;
    }
}
