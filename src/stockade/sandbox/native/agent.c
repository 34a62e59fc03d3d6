/* stockade-agent: the one process the daemon talks to inside a namespace sandbox.
 *
 *   stockade-agent launch UID GID PROCS_FILE... -- PROGRAM ARG...
 *   stockade-agent serve
 *
 * The contract (framing, frame types, behaviour) is docs/agent-protocol.md. Static, single
 * threaded, one poll() loop over: fd 0 (requests), a signalfd for SIGCHLD, every open child
 * stdout/stderr pipe, and the stdin pipes that have buffered data to deliver.
 * Build: gcc -O2 -static -std=gnu11 -Wall -Wextra -Werror -o stockade-agent agent.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

enum { /* frame types */
    T_EXEC = 0x01, T_STDIN = 0x02, T_SIGNAL = 0x03, T_FLOW = 0x04,
    T_READ = 0x10, T_WRITE = 0x11, T_WRITE_DATA = 0x12, T_WRITE_END = 0x13, T_LIST = 0x14,
    T_HELLO = 0x80, T_STDOUT = 0x81, T_STDERR = 0x82, T_EXIT = 0x83,
    T_DATA = 0x90, T_LISTING = 0x92, T_END = 0x9F, T_FAULT = 0xFF,
};

#define HEADER 9                     /* u32 length, u8 type, u32 channel */
#define MAX_PAYLOAD (1u << 20)
#define DATA_CHUNK (256u << 10)      /* one DATA frame of a READ */
#define LISTING_CHUNK (64u << 10)    /* entries batched into one LISTING frame */
#define OUTPUT_CHUNK (64u << 10)     /* one read() of a child's stdout or stderr */
#define MAX_CHANNELS 4096            /* channels open at once */
#define REMEMBERED 4096              /* exited execs whose session SIGNAL can still reach */
#define STDIN_LIMIT (16u << 20)      /* stdin bytes buffered for one exec before we give up */
#define DRAIN_READS 32               /* reads of a pipe after its exec exited (2 MiB) */
#define KILL_ROUNDS 8

extern char **environ;

struct chan {
    uint32_t id;
    bool exec;        /* an exec, else a WRITE in progress */
    pid_t pid;        /* exec: the child, its process group and its session */
    int fd[3];        /* exec: stdin (our write end), stdout, stderr (our read ends); WRITE: fd[0] */
    int err;          /* WRITE: the first error, reported by the END that answers WRITE_END */
    bool close_in;    /* exec: close stdin once `pend` is delivered */
    bool paused;      /* exec: FLOW asked us to stop reading its output for now */
    char *pend;       /* exec: stdin bytes the child has not taken yet */
    size_t plen, poff;
};

static struct chan chans[MAX_CHANNELS];
static int nchans;
static struct { uint32_t id; pid_t pid; } exited[REMEMBERED]; /* a ring, newest at nexited-1 */
static unsigned nexited;
static int sigfd = -1;
static bool sandboxed;  /* we are the sandbox's first process: kill(-1) reaches only the sandbox */
static bool ending;     /* exiting: a failed write to fd 1 must not recurse */
static mode_t saved_umask;
static struct rlimit saved_nofile;

static uint8_t inbuf[HEADER + MAX_PAYLOAD + (64u << 10)];
static size_t inlen;
static uint8_t iobuf[DATA_CHUNK]; /* child output, READ data and LISTING entries */
static struct pollfd pfd[2 + 3 * MAX_CHANNELS];
static struct { struct chan *c; int i; } polled[2 + 3 * MAX_CHANNELS];

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void put64(uint8_t *p, uint64_t v) { put32(p, v >> 32); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static _Noreturn void finish(int status);

/* ---- replies ------------------------------------------------------------------------- */

/* Writes one frame to fd 1. It may block: that is the daemon's back-pressure. */
static void send_frame(uint8_t type, uint32_t chan, const void *payload, size_t len) {
    uint8_t head[HEADER];
    put32(head, (uint32_t)(len + 5));
    head[4] = type;
    put32(head + 5, chan);
    struct iovec iov[2] = {{head, HEADER}, {(void *)payload, len}}, *v = iov;
    int n = 2;
    while (n > 0) {
        ssize_t w = writev(1, v, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { /* fd 1 was handed to us non-blocking */
            poll(&(struct pollfd){.fd = 1, .events = POLLOUT}, 1, -1);
            continue;
        }
        if (w < 0) { /* the daemon is gone */
            if (ending) return;
            finish(1);
        }
        for (; n > 0 && (size_t)w >= v->iov_len; v++, n--) w -= (ssize_t)v->iov_len;
        if (n > 0) {
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
}

static void send_u32(uint8_t type, uint32_t chan, uint32_t value) {
    uint8_t p[4];
    put32(p, value);
    send_frame(type, chan, p, 4);
}

/* The stream is broken (or we cannot go on): FAULT, kill everything, exit. */
static _Noreturn __attribute__((format(printf, 2, 3))) void die(int status, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    fprintf(stderr, "stockade-agent: %s\n", msg);
    ending = true;
    send_frame(T_FAULT, 0, msg, (size_t)n);
    finish(status);
}

/* ---- killing process trees ----------------------------------------------------------- */

struct proc { pid_t pid, ppid, pgrp, sid; bool hit; };

static bool among(const pid_t *set, size_t n, pid_t pid) {
    for (size_t i = 0; i < n; i++)
        if (set[i] == pid) return true;
    return false;
}

/* The live processes in /proc, with their parent, process group and session. The fields
 * come after the last ')' of /proc/<pid>/stat, since the command name may contain one. */
static size_t scan_proc(struct proc **out) {
    DIR *d = opendir("/proc");
    size_t n = 0, cap = 0;
    struct proc *ps = NULL;
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], buf[1024], state, *end;
        long pid = strtol(e->d_name, &end, 10);
        if (pid <= 0 || *end) continue;
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = 0;
        char *p = strrchr(buf, ')');
        struct proc pr = {.pid = (pid_t)pid};
        if (!p || sscanf(p + 1, " %c %d %d %d", &state, &pr.ppid, &pr.pgrp, &pr.sid) != 4) continue;
        if (state == 'Z' || state == 'X') continue; /* dead already */
        if (n == cap) {
            struct proc *grown = realloc(ps, (cap = cap ? 2 * cap : 256) * sizeof *ps);
            if (!grown) break;
            ps = grown;
        }
        ps[n++] = pr;
    }
    if (d) closedir(d);
    *out = ps;
    return n;
}

/* Signals every process whose session or process group is one of `roots`, every child of
 * this agent when `mine`, and every descendant of those. Each round takes a fresh snapshot
 * of /proc, closes it over parent pids, and signals what is new; it stops when a round finds
 * nothing new. Each process is signalled once. */
static void kill_tree(const pid_t *roots, size_t nroots, bool mine, int sig) {
    pid_t self = getpid(), *hit = NULL;
    size_t nhit = 0;
    for (int round = 0; round < KILL_ROUNDS; round++) {
        struct proc *ps;
        size_t n = scan_proc(&ps), fresh = 0;
        for (size_t i = 0; i < n; i++)
            ps[i].hit = ps[i].pid != self &&
                        (among(roots, nroots, ps[i].sid) || among(roots, nroots, ps[i].pgrp) ||
                         (mine && ps[i].ppid == self) || among(hit, nhit, ps[i].ppid));
        for (bool grew = true; grew;) { /* descendants, to a fixed point */
            grew = false;
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; !ps[i].hit && j < n; j++)
                    if (ps[j].hit && ps[j].pid == ps[i].ppid && ps[i].pid != self)
                        ps[i].hit = grew = true;
        }
        pid_t *more = realloc(hit, (nhit + n + 1) * sizeof *hit);
        if (!more) { free(ps); break; }
        hit = more;
        for (size_t i = 0; i < n; i++) {
            if (!ps[i].hit || among(hit, nhit, ps[i].pid)) continue;
            kill(ps[i].pid, sig);
            hit[nhit++] = ps[i].pid;
            fresh++;
        }
        free(ps);
        if (!fresh) break;
    }
    free(hit);
}

/* A child that has not reached setsid() yet is in none of the groups we signal: it alone. */
static void signal_unsettled(pid_t pid, int sig) {
    if (getsid(pid) != pid) kill(pid, sig);
}

/* Signals every process but the agent. Inside the sandbox that is kill(-1); run on a host
 * (the tests) it is every exec's session and every descendant of ours, since we are a
 * child subreaper and orphans are reparented to us. */
static void signal_everything(int sig) {
    if (sandboxed) {
        kill(-1, sig);
        return;
    }
    pid_t roots[MAX_CHANNELS + REMEMBERED];
    size_t n = 0;
    for (int i = 0; i < nchans; i++)
        if (chans[i].exec) signal_unsettled(roots[n++] = chans[i].pid, sig);
    for (unsigned i = 0; i < REMEMBERED && i < nexited; i++) roots[n++] = exited[i].pid;
    kill_tree(roots, n, true, sig);
}

static _Noreturn void finish(int status) {
    ending = true;
    signal_everything(SIGKILL);
    exit(status);
}

/* ---- channels ------------------------------------------------------------------------ */

static struct chan *find(uint32_t id) {
    for (int i = 0; i < nchans; i++)
        if (chans[i].id == id) return &chans[i];
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void close_stdin(struct chan *c) {
    close_fd(&c->fd[0]);
    free(c->pend);
    c->pend = NULL;
    c->plen = c->poff = 0;
}

static void drop(struct chan *c) {
    close_stdin(c);
    close_fd(&c->fd[1]);
    close_fd(&c->fd[2]);
    *c = chans[--nchans]; /* pointers into chans[] are stale after this */
}

/* Gives the child what it will take of its pending stdin, without blocking. */
static void flush_stdin(struct chan *c) {
    while (c->fd[0] >= 0 && c->poff < c->plen) {
        ssize_t w = write(c->fd[0], c->pend + c->poff, c->plen - c->poff);
        if (w > 0) c->poff += (size_t)w;
        else if (w < 0 && errno == EINTR) continue;
        else if (w < 0 && errno == EAGAIN) return;
        else close_stdin(c); /* EPIPE: nobody reads it any more */
    }
    if (c->close_in) close_stdin(c);
    free(c->pend); /* all delivered (or the pipe is closed): no buffer until the next STDIN */
    c->pend = NULL;
    c->plen = c->poff = 0;
}

/* Forwards what one output pipe (1 stdout, 2 stderr) holds; with `drain`, until it is empty
 * (bounded, for a background writer that never stops). End-of-file closes it. */
static void pump(struct chan *c, int i, bool drain) {
    for (int reads = 0; c->fd[i] >= 0 && reads < (drain ? DRAIN_READS : 1); reads++) {
        ssize_t r = read(c->fd[i], iobuf, OUTPUT_CHUNK);
        if (r > 0) send_frame(i == 1 ? T_STDOUT : T_STDERR, c->id, iobuf, (size_t)r);
        else if (r < 0 && errno == EINTR) reads--;
        else if (r < 0 && errno == EAGAIN) return;
        else close_fd(&c->fd[i]);
    }
}

/* ---- exec ---------------------------------------------------------------------------- */

static _Noreturn void child(int in, int out, int err, char *cwd, char **argv, char **envp) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL); /* SIGKILL, SIGSTOP fail: fine */
    /* glibc keeps 32 and 33 for itself and refuses to reset them, but an ignored one is
     * inherited through exec: reset them with the kernel's own call. */
    struct { void (*handler)(int); unsigned long flags; void (*restorer)(void); uint64_t mask; }
        dfl = {SIG_DFL, 0, NULL, 0};
    for (int s = 32; s <= 33; s++) syscall(SYS_rt_sigaction, s, &dfl, NULL, sizeof dfl.mask);
    setsid();
    if (in < 0 && (in = open("/dev/null", O_RDONLY)) < 0) { /* no /dev: an empty pipe */
        int p[2];
        if (pipe(p) == 0) { in = p[0]; close(p[1]); }
    }
    dup2(in, 0); /* our fds 0-2 are open, so in/out/err are all >= 3 */
    dup2(out, 1);
    dup2(err, 2);
    if (cwd[0] && chdir(cwd) < 0) {
        dprintf(2, "stockade-agent: chdir %s: %s\n", cwd, strerror(errno));
        _exit(126);
    }
    /* INT_MAX rather than ~0U: gVisor refuses a bound past INT_MAX (EINVAL), and the
     * fallback below costs a second under its ptrace platform. No fd is above INT_MAX. */
    if (close_range(3, INT_MAX, 0) < 0) /* before Linux 5.9; we never hold fds past our limit */
        for (int fd = 3; fd < 3 * MAX_CHANNELS + 64; fd++) close(fd);
    /* When the sandbox's memory (tmpfs pages included) runs out, the OOM killer must pick
     * a command, never bubblewrap or the agent, whose death ends the sandbox. Raising
     * one's own score needs no privilege (lowering it would), and a command cannot lower
     * it again. Our non-dumpable flag, inherited, would make /proc/self root's. */
    prctl(PR_SET_DUMPABLE, 1);
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        if (write(oom, "1000", 4) < 0) { /* best effort: the command still runs */ }
        close(oom);
    }
    setrlimit(RLIMIT_NOFILE, &saved_nofile);
    umask(saved_umask);
    environ = envp;
    execvp(argv[0], argv);
    int e = errno;
    dprintf(2, "stockade-agent: %s: %s\n", argv[0], strerror(e));
    _exit(e == ENOENT || e == ENOTDIR ? 127 : 126);
}

/* An exec the agent could not even start ends like one that could not run. */
static void refuse_exec(uint32_t id, const char *what, int err) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "stockade-agent: %s: %s\n", what, strerror(err));
    send_frame(T_STDERR, id, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    send_u32(T_EXIT, id, 126);
}

static void do_exec(uint32_t id, const uint8_t *p, uint32_t len) {
    if (len < 5) die(2, "malformed EXEC on channel %u", id);
    bool piped = p[0] & 1;
    size_t argc = get16(p + 1), envc = get16(p + 3), n = 1 + argc + envc;
    /* vec: cwd, argv[0..argc), NULL, env[0..envc), NULL; the strings stay in inbuf */
    char **vec = malloc((n + 2) * sizeof *vec);
    if (!vec) die(1, "out of memory");
    const uint8_t *q = p + 5, *end = p + len;
    for (size_t i = 0, slot = 0; i < n; i++) {
        const uint8_t *nul = q < end ? memchr(q, 0, (size_t)(end - q)) : NULL;
        if (!nul) die(2, "malformed EXEC on channel %u", id);
        vec[slot++] = (char *)q;
        if (i == argc) vec[slot++] = NULL; /* after argv */
        q = nul + 1;
    }
    vec[n + 1] = NULL;
    if (argc == 0 || q != end) die(2, "malformed EXEC on channel %u", id);
    if (nchans == MAX_CHANNELS) {
        free(vec);
        refuse_exec(id, "exec", EMFILE);
        return;
    }
    /* pipes[k] = {read end, write end}; the child gets stdin's read end and the others'
     * write ends, and our ends are non-blocking */
    int pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}}, err = 0;
    const char *what = "pipe";
    for (int k = piped ? 0 : 1; k < 3 && !err; k++)
        if (pipe2(pipes[k], O_CLOEXEC) < 0) err = errno;
    pid_t pid = err ? -1 : fork();
    if (pid == 0) child(pipes[0][0], pipes[1][1], pipes[2][1], vec[0], vec + 1, vec + argc + 2);
    if (pid < 0 && !err) {
        err = errno;
        what = "fork";
    }
    free(vec);
    close_fd(&pipes[0][0]);
    close_fd(&pipes[1][1]);
    close_fd(&pipes[2][1]);
    if (err) {
        close_fd(&pipes[0][1]);
        close_fd(&pipes[1][0]);
        close_fd(&pipes[2][0]);
        refuse_exec(id, what, err);
        return;
    }
    struct chan *c = &chans[nchans++];
    *c = (struct chan){.id = id, .exec = true, .pid = pid,
                       .fd = {pipes[0][1], pipes[1][0], pipes[2][0]}};
    for (int k = 0; k < 3; k++)
        if (c->fd[k] >= 0) fcntl(c->fd[k], F_SETFL, O_NONBLOCK);
}

static void do_stdin(struct chan *c, const uint8_t *p, uint32_t len) {
    if (!c || !c->exec || c->fd[0] < 0 || c->close_in) return; /* late or pointless: drop */
    if (len == 0) {
        c->close_in = true;
    } else if (c->plen - c->poff + len > STDIN_LIMIT) { /* the child is not reading it */
        static const char msg[] = "stockade-agent: stdin: 16 MiB not read, closing it\n";
        send_frame(T_STDERR, c->id, msg, sizeof msg - 1);
        close_stdin(c);
        return;
    } else {
        size_t have = c->plen - c->poff;
        char *buf = malloc(have + len);
        if (!buf) die(1, "out of memory");
        if (have) memcpy(buf, c->pend + c->poff, have);
        memcpy(buf + have, p, len);
        free(c->pend);
        c->pend = buf;
        c->plen = have + len;
        c->poff = 0;
    }
    flush_stdin(c);
}

static pid_t recall(uint32_t id) {
    for (unsigned k = 0; k < REMEMBERED && k < nexited; k++) {
        unsigned i = (nexited - 1 - k) % REMEMBERED;
        if (exited[i].id == id) return exited[i].pid;
    }
    return 0;
}

static void do_signal(uint32_t id, struct chan *c, const uint8_t *p, uint32_t len) {
    if (len != 2 || p[1] > 1) die(2, "malformed SIGNAL on channel %u", id);
    int sig = p[0];
    if (id == 0) { /* an extension of the spec: the whole sandbox, but not the agent */
        signal_everything(sig);
        return;
    }
    bool running = c && c->exec;
    pid_t pid = running ? c->pid : c ? 0 : recall(id);
    if (pid <= 0) return;
    if (running) signal_unsettled(pid, sig);
    if (p[1] == 0) kill(-pid, sig);
    else kill_tree(&pid, 1, false, sig);
}

/* Every waitable child: an exec ends with what is left of its output, then EXIT. Orphans we
 * adopted as subreaper are just reaped. */
static void reap(void) {
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) == sizeof si) {}
    int status;
    for (pid_t pid; (pid = waitpid(-1, &status, WNOHANG)) > 0;) {
        struct chan *c = NULL;
        for (int i = 0; i < nchans && !c; i++)
            if (chans[i].exec && chans[i].pid == pid) c = &chans[i];
        if (!c) continue;
        pump(c, 1, true);
        pump(c, 2, true);
        int code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
        send_u32(T_EXIT, c->id, (uint32_t)code);
        unsigned slot = nexited++ % REMEMBERED;
        exited[slot].id = c->id;
        exited[slot].pid = pid;
        drop(c);
    }
}

/* ---- files --------------------------------------------------------------------------- */

/* 0 when `fd` is of the kind `want` (S_IFREG or S_IFDIR), else the errno the spec names. */
static int kind_error(int fd, mode_t want) {
    struct stat st;
    if (fstat(fd, &st) < 0) return errno;
    if ((st.st_mode & S_IFMT) == want) return 0;
    return S_ISDIR(st.st_mode) ? EISDIR : want == S_IFDIR ? ENOTDIR : EINVAL;
}

/* open(2) for a file operation: the last component is never followed, a fifo never blocks
 * the open, and ENXIO (a fifo without a reader, a socket) is reported as EINVAL. */
static int open_file(const char *path, int flags, mode_t mode, mode_t want, int *err) {
    int fd = open(path, flags | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC, mode);
    *err = fd < 0 ? (errno == ENXIO ? EINVAL : errno) : kind_error(fd, want);
    if (fd >= 0 && *err) close_fd(&fd);
    if (fd >= 0) fcntl(fd, F_SETFL, 0);
    return fd;
}

static void do_read(uint32_t id, const char *path) {
    int err, fd = open_file(path, O_RDONLY, 0, S_IFREG, &err);
    while (!err) {
        ssize_t r = read(fd, iobuf, DATA_CHUNK);
        if (r > 0) send_frame(T_DATA, id, iobuf, (size_t)r);
        else if (r == 0) break;
        else if (errno != EINTR) err = errno;
    }
    close_fd(&fd);
    send_u32(T_END, id, (uint32_t)err);
}

static void do_write(uint32_t id, mode_t mode, const char *path) {
    if (nchans == MAX_CHANNELS) return; /* no room: its WRITE_END finds no WRITE, gets EBADF */
    char dir[PATH_MAX];
    int mkdir_err = 0;
    size_t n = strlen(path);
    if (n < sizeof dir) { /* mkdir -p the parents; errors show up as open's */
        memcpy(dir, path, n + 1);
        for (char *s = dir + 1; (s = strchr(s, '/')); *s++ = '/') {
            *s = 0;
            if (mkdir(dir, 0755) < 0 && errno != EEXIST) mkdir_err = errno;
        }
    }
    struct chan *c = &chans[nchans++];
    *c = (struct chan){.id = id, .fd = {-1, -1, -1}};
    c->fd[0] = open_file(path, O_WRONLY | O_CREAT, mode, S_IFREG, &c->err);
    /* a parent that could not be made (a read-only root) explains a missing one */
    if (c->err == ENOENT && mkdir_err) c->err = mkdir_err;
    if (c->fd[0] >= 0 && (ftruncate(c->fd[0], 0) < 0 || fchmod(c->fd[0], mode) < 0))
        c->err = errno;
}

static void do_write_data(struct chan *c, const uint8_t *p, uint32_t len) {
    if (!c || c->exec || c->err) return;
    for (uint32_t off = 0; off < len;) {
        ssize_t w = write(c->fd[0], p + off, len - off);
        if (w > 0) off += (uint32_t)w;
        else if (w < 0 && errno == EINTR) continue;
        else { c->err = w < 0 ? errno : EIO; return; }
    }
}

static void do_write_end(uint32_t id, struct chan *c) {
    if (!c || c->exec) { send_u32(T_END, id, EBADF); return; }
    if (c->fd[0] >= 0 && close(c->fd[0]) < 0 && !c->err) c->err = errno;
    c->fd[0] = -1;
    send_u32(T_END, id, (uint32_t)c->err);
    drop(c);
}

static void do_list(uint32_t id, const char *path) {
    int err, fd = open_file(path, O_RDONLY | O_DIRECTORY, 0, S_IFDIR, &err);
    struct stat st;
    if (err == ENOTDIR && lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) err = ELOOP;
    DIR *d = err ? NULL : fdopendir(fd);
    if (!err && !d) { err = errno; close_fd(&fd); }
    size_t used = 0;
    for (struct dirent *e; d;) {
        errno = 0;
        if (!(e = readdir(d))) { err = errno; break; }
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue; /* gone */
        size_t name = strlen(e->d_name);
        if (used + 23 + name > LISTING_CHUNK) {
            send_frame(T_LISTING, id, iobuf, used);
            used = 0;
        }
        uint8_t *q = iobuf + used;
        q[0] = S_ISREG(st.st_mode) ? 'f' : S_ISDIR(st.st_mode) ? 'd' : S_ISLNK(st.st_mode) ? 'l' : 'o';
        put32(q + 1, st.st_mode);
        put64(q + 5, (uint64_t)st.st_size);
        put64(q + 13, (uint64_t)st.st_mtime);
        put16(q + 21, (uint16_t)name);
        memcpy(q + 23, e->d_name, name);
        used += 23 + name;
    }
    if (used) send_frame(T_LISTING, id, iobuf, used);
    if (d) closedir(d);
    send_u32(T_END, id, (uint32_t)err);
}

/* ---- requests ------------------------------------------------------------------------ */

/* The path of READ, WRITE or LIST: exactly one NUL, at the end. */
static const char *path_of(uint8_t type, uint32_t id, const uint8_t *p, uint32_t len) {
    if (!len || memchr(p, 0, len) != p + len - 1) die(2, "malformed %#x on channel %u", type, id);
    return (const char *)p;
}

static void handle(uint8_t type, uint32_t id, const uint8_t *p, uint32_t len) {
    struct chan *c = find(id);
    bool opens = type == T_EXEC || type == T_READ || type == T_WRITE || type == T_LIST;
    if (id == 0 && type != T_SIGNAL) die(2, "request %#x on channel 0", type);
    if (opens && c) die(2, "channel %u is already open", id);
    switch (type) {
    case T_EXEC: do_exec(id, p, len); break;
    case T_STDIN: do_stdin(c, p, len); break;
    case T_SIGNAL: do_signal(id, c, p, len); break;
    case T_FLOW:
        if (len != 1 || p[0] > 1) die(2, "malformed FLOW on channel %u", id);
        if (c && c->exec) c->paused = p[0] == 0;
        break;
    case T_READ: do_read(id, path_of(type, id, p, len)); break;
    case T_WRITE:
        if (len < 4) die(2, "malformed WRITE on channel %u", id);
        do_write(id, get32(p) & 07777, path_of(type, id, p + 4, len - 4));
        break;
    case T_WRITE_DATA: do_write_data(c, p, len); break;
    case T_WRITE_END: do_write_end(id, c); break;
    case T_LIST: do_list(id, path_of(type, id, p, len)); break;
    default: die(2, "unknown frame type %#x", type);
    }
}

/* Reads what fd 0 has and handles every complete frame. */
static void read_requests(void) {
    ssize_t r = read(0, inbuf + inlen, sizeof inbuf - inlen);
    if (r == 0) finish(0); /* the daemon closed the stream: the sandbox ends */
    if (r < 0) {
        if (errno == EINTR || errno == EAGAIN) return;
        die(1, "reading requests: %s", strerror(errno));
    }
    inlen += (size_t)r;
    size_t off = 0;
    while (inlen - off >= 4) {
        uint32_t len = get32(inbuf + off);
        if (len < 5 || len - 5 > MAX_PAYLOAD) die(2, "bad frame length %u", len);
        if (inlen - off < 4 + (size_t)len) break;
        handle(inbuf[off + 4], get32(inbuf + off + 5), inbuf + off + HEADER, len - 5);
        off += 4 + (size_t)len;
    }
    memmove(inbuf, inbuf + off, inlen - off);
    inlen -= off;
}

static int serve(void) {
    /* pid 1, or bubblewrap's first child under its pid-1 init: alone in our pid namespace */
    sandboxed = getpid() == 1 || (getpid() == 2 && getppid() == 1);
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd) return 1;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    prctl(PR_SET_DUMPABLE, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL); /* an inherited SIG_IGN would make children unwaitable */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    if ((sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) die(1, "signalfd: %m");
    saved_umask = umask(0); /* modes are exactly what WRITE asks; children get it back */
    getrlimit(RLIMIT_NOFILE, &saved_nofile);
    struct rlimit more = saved_nofile;
    rlim_t want = 3 * MAX_CHANNELS + 64;
    if (more.rlim_cur < want) more.rlim_cur = more.rlim_max < want ? more.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &more);
    send_frame(T_HELLO, 0, "stockade-agent 1", 16);
    for (;;) {
        int n = 2;
        pfd[0] = (struct pollfd){.fd = 0, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = sigfd, .events = POLLIN};
        for (int i = 0; i < nchans; i++) {
            struct chan *c = &chans[i];
            for (int k = 0; c->exec && k < 3; k++) {
                if (c->fd[k] < 0 || (k == 0 && c->poff == c->plen) || (k && c->paused)) continue;
                pfd[n] = (struct pollfd){.fd = c->fd[k], .events = k ? POLLIN : POLLOUT};
                polled[n].c = c;
                polled[n++].i = k;
            }
        }
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            die(1, "poll: %m");
        }
        /* pipes first: nothing here drops a channel, so polled[] stays valid */
        for (int i = 2; i < n; i++) {
            if (!pfd[i].revents) continue;
            if (polled[i].i == 0) flush_stdin(polled[i].c);
            else pump(polled[i].c, polled[i].i, false);
        }
        if (pfd[1].revents) reap();
        if (pfd[0].revents) read_requests();
    }
}

/* ---- launch -------------------------------------------------------------------------- */

static _Noreturn __attribute__((format(printf, 1, 2))) void launch_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("stockade-agent: launch: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(125);
}

static unsigned long parse_id(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *s < '0' || *s > '9' || *end || errno || v >= UINT32_MAX)
        launch_fail("bad %s %s", what, s);
    if (v == 0) launch_fail("refusing to run as %s 0", what);
    return v;
}

static int launch(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[0], "--nice")) { /* background work: a pool's spare */
        char *end;
        long nice = strtol(argv[1], &end, 10);
        if (*end || nice < 0 || nice > 19) launch_fail("--nice takes 0 to 19");
        if (setpriority(PRIO_PROCESS, 0, (int)nice) < 0) launch_fail("setpriority: %m");
        argc -= 2;
        argv += 2;
    }
    int sep = 0;
    while (sep < argc && strcmp(argv[sep], "--")) sep++;
    if (sep < 3 || sep + 1 >= argc)
        launch_fail("usage: stockade-agent launch [--nice N] UID GID PROCS_FILE... -- PROGRAM...");
    uid_t uid = (uid_t)parse_id(argv[0], "uid");
    gid_t gid = (gid_t)parse_id(argv[1], "gid");
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    for (int i = 2; i < sep; i++) { /* into the cgroups first, while we may still write there */
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || write(fd, pid, (size_t)len) != len || close(fd) < 0)
            launch_fail("%s: %m", argv[i]);
    }
    if (setgroups(0, NULL) < 0) launch_fail("setgroups: %m");
    if (setresgid(gid, gid, gid) < 0) launch_fail("setresgid: %m");
    if (setresuid(uid, uid, uid) < 0) launch_fail("setresuid: %m");
    uid_t r, e, s;
    gid_t rg, eg, sg;
    if (getresuid(&r, &e, &s) < 0 || r != uid || e != uid || s != uid ||
        getresgid(&rg, &eg, &sg) < 0 || rg != gid || eg != gid || sg != gid ||
        getgroups(0, NULL) != 0)
        launch_fail("the identity did not change");
    if (setuid(0) == 0 || setgid(0) == 0) launch_fail("uid or gid 0 can still be regained");
    execvp(argv[sep + 1], argv + sep + 1);
    launch_fail("%s: %m", argv[sep + 1]);
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "serve")) return serve();
    if (argc >= 2 && !strcmp(argv[1], "launch")) return launch(argc - 2, argv + 2);
    fputs("usage: stockade-agent launch UID GID PROCS_FILE... -- PROGRAM ARG...\n"
          "       stockade-agent serve\n", stderr);
    return 2;
}
