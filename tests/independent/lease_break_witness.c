/*
 * An independent witness of lease-break timings, for comparing pinstorm's break storms
 * with the least a program can do. Shares no code with pinstorm: fork, pipes, fcntl,
 * sigtimedwait.
 *
 * Build: cc -O2 -o witness lease_break_witness.c
 * usage: witness FILE LEASE BREAKER ROUNDS
 *   LEASE:   read | write
 *   BREAKER: open-rdwr | open-wronly | open-rdonly | truncate |
 *            open-rdwr-nonblock | open-rdonly-nonblock
 * FILE must exist and be opened by nobody else.
 *
 * A forked holder, round after round: open(O_RDONLY), F_SETSIG SIGRTMIN+1 (blocked),
 * F_SETLEASE, tell the breaker; sigtimedwait; F_UNLCK at once; only then report. The
 * breaker (the parent) times its syscall; it closes what it opened before the next round.
 *
 * Prints key=value lines, timings as medians over the signalled rounds, named as pinstorm
 * names them:
 *   rounds, signalled, ended_unlock, breaker_ok, breaker_EAGAIN, breaker_other
 *   breaker_wait_p50_ns  the breaking syscall, entry to return (CLOCK_MONOTONIC around it)
 *   notify_p50_ns        breaker's clock read before the syscall -> holder's sigtimedwait
 *                        returned
 *   release_p50_ns       the holder's F_UNLCK
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp);
	return v[n / 2];
}

/* What the holder reports after each round: 0 for no signal. */
struct report {
	uint64_t woke;
	uint64_t release_ns;
	int unlocked;
};

static void die(const char *what)
{
	fprintf(stderr, "witness: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void holder(const char *path, int lease, int rounds, int sig, int ready, int go, int rep)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	for (int r = 0; r < rounds; r++) {
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fcntl(fd, F_SETSIG, sig) || fcntl(fd, F_SETLEASE, lease))
			die("holder: open, F_SETSIG or F_SETLEASE");
		if (write(ready, "r", 1) != 1)
			die("holder: ready");
		struct report out = { 0 };
		/* The breaker tells us through `go` when its syscall returned without a break. */
		struct timespec ts = { 0, 200 * 1000000L };
		if (sigtimedwait(&set, NULL, &ts) == sig) {
			out.woke = now_ns();
			uint64_t t = now_ns();
			out.unlocked = fcntl(fd, F_SETLEASE, F_UNLCK) == 0;
			out.release_ns = now_ns() - t;
		}
		if (write(rep, &out, sizeof(out)) != sizeof(out))
			die("holder: report");
		char b;
		if (read(go, &b, 1) != 1)
			die("holder: go");
		close(fd);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s FILE read|write BREAKER ROUNDS\n", argv[0]);
		return 2;
	}
	const char *path = argv[1];
	int lease = !strcmp(argv[2], "write") ? F_WRLCK : F_RDLCK;
	const char *bk = argv[3];
	int rounds = atoi(argv[4]);
	int truncating = !strcmp(bk, "truncate");
	int flags;
	if (!strcmp(bk, "open-rdwr"))
		flags = O_RDWR;
	else if (!strcmp(bk, "open-wronly"))
		flags = O_WRONLY;
	else if (!strcmp(bk, "open-rdonly"))
		flags = O_RDONLY;
	else if (!strcmp(bk, "open-rdwr-nonblock"))
		flags = O_RDWR | O_NONBLOCK;
	else if (!strcmp(bk, "open-rdonly-nonblock"))
		flags = O_RDONLY | O_NONBLOCK;
	else if (truncating)
		flags = 0;
	else {
		fprintf(stderr, "unknown breaker %s\n", bk);
		return 2;
	}
	struct stat st;
	if (stat(path, &st))
		die(path);
	int sig = SIGRTMIN + 1;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	/* Blocked before the fork, so the holder never takes the signal's default action. */
	sigprocmask(SIG_BLOCK, &set, NULL);
	int ready[2], go[2], rep[2];
	if (pipe(ready) || pipe(go) || pipe(rep))
		die("pipe");
	pid_t h = fork();
	if (h < 0)
		die("fork");
	if (h == 0) {
		close(ready[0]);
		close(go[1]);
		close(rep[0]);
		holder(path, lease, rounds, sig, ready[1], go[0], rep[1]);
	}
	close(ready[1]);
	close(go[0]);
	close(rep[1]);
	uint64_t *wait = calloc(rounds, 8), *notify = calloc(rounds, 8), *rel = calloc(rounds, 8);
	int n = 0, signalled = 0, unlocked = 0, ok = 0, eagain = 0, other = 0;
	for (int r = 0; r < rounds; r++) {
		char b;
		if (read(ready[0], &b, 1) != 1)
			die("breaker: ready");
		uint64_t t0 = now_ns();
		int res = truncating ? truncate(path, st.st_size) : open(path, flags | O_CLOEXEC);
		uint64_t t1 = now_ns();
		int err = errno;
		struct report in;
		if (read(rep[0], &in, sizeof(in)) != sizeof(in))
			die("breaker: report");
		if (res >= 0) {
			ok++;
			if (!truncating)
				close(res);
		} else if (err == EAGAIN || err == EWOULDBLOCK) {
			eagain++;
		} else {
			other++;
		}
		if (in.woke) {
			signalled++;
			unlocked += in.unlocked;
			wait[n] = t1 - t0;
			notify[n] = in.woke - t0;
			rel[n] = in.release_ns;
			n++;
		}
		if (write(go[1], "g", 1) != 1)
			die("breaker: go");
	}
	waitpid(h, NULL, 0);
	printf("rounds=%d\nsignalled=%d\nended_unlock=%d\n", rounds, signalled, unlocked);
	printf("breaker_ok=%d\nbreaker_EAGAIN=%d\nbreaker_other=%d\n", ok, eagain, other);
	printf("breaker_wait_p50_ns=%llu\n", (unsigned long long)median(wait, n));
	printf("notify_p50_ns=%llu\n", (unsigned long long)median(notify, n));
	printf("release_p50_ns=%llu\n", (unsigned long long)median(rel, n));
	return 0;
}
