/*
 * An independent probe of the lease lifecycle scenarios, for cross-checking pinstorm.
 * Shares no code with pinstorm: fork, fcntl, sigtimedwait, liburing.
 *
 * Build: cc -O2 -o probe lease_probe.c -luring
 * usage: probe SCENARIO FILE LEASE_BREAK_TIME_S
 *   SCENARIO: dup-close | close-before-unpin | munmap-before-unregister | hung-expiry |
 *             killed-while-waiting | fork-child-pins | scm-rights
 * FILE must exist, be 2 MiB, and be opened by nobody else.
 * prints key=value facts, one per line, named as pinstorm names them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LEN (2u << 20)
static const char *path;
static int lbt;
static int sig;

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void fact(const char *k, const char *v)
{
	printf("%s=%s\n", k, v);
	fflush(stdout);
}

static int wait_sig(int ms)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, sig);
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	return sigtimedwait(&s, NULL, &ts) == sig;
}

/* Wait until the kernel took the lease away. */
static int wait_revoked(int fd, int ms)
{
	double end = now_ms() + ms;
	while (now_ms() < end) {
		if (fcntl(fd, F_GETLEASE) == F_UNLCK)
			return 1;
		usleep(2000);
	}
	return 0;
}

struct pin {
	struct io_uring ring;
	char *p;
};

static int pin(struct pin *pn, int fd)
{
	pn->p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (pn->p == MAP_FAILED || io_uring_queue_init(4, &pn->ring, 0))
		return -1;
	struct iovec iov = { pn->p, LEN };
	return io_uring_register_buffers(&pn->ring, &iov, 1);
}

/* The device writes 4 KiB of 0xc3 at offset 0; is it in the file? Read back through
 * `fd`, which this process already has: a new open would break its own lease. */
static const char *device_write(struct pin *pn, int fd)
{
	int src = memfd_create("src", 0);
	static char buf[4096], back[4096];
	memset(buf, 0xc3, sizeof(buf));
	pwrite(src, buf, sizeof(buf), 0);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&pn->ring);
	io_uring_prep_read_fixed(sqe, src, pn->p, sizeof(buf), 0, 0);
	io_uring_submit(&pn->ring);
	struct io_uring_cqe *cqe;
	io_uring_wait_cqe(&pn->ring, &cqe);
	int res = cqe->res;
	io_uring_cqe_seen(&pn->ring, cqe);
	if (res < 0)
		return strerrorname_np(-res);
	ssize_t n = pread(fd, back, sizeof(back), 0);
	return (n == sizeof(back) && !memcmp(buf, back, sizeof(buf))) ? "kept" : "lost";
}

/* Whether /proc/locks lists a lease on FILE's inode. */
static int lease_in_proc_locks(void)
{
	struct stat st;
	if (stat(path, &st))
		return -1;
	FILE *f = fopen("/proc/locks", "r");
	if (!f)
		return -1;
	char line[256];
	int found = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned maj, min;
		unsigned long ino;
		char kind[16], dev_ino[64];
		/* "1: LEASE  ACTIVE    WRITE 1234 00:2f:12345 0 EOF" */
		if (sscanf(line, "%*d: %15s %*s %*s %*d %63s", kind, dev_ino) != 2)
			continue;
		if (strcmp(kind, "LEASE") || sscanf(dev_ino, "%x:%x:%lu", &maj, &min, &ino) != 3)
			continue;
		if (ino == st.st_ino && maj == major(st.st_dev) && min == minor(st.st_dev))
			found = 1;
	}
	fclose(f);
	return found;
}

static int take_lease(int fd)
{
	if (fcntl(fd, F_SETSIG, sig) || fcntl(fd, F_SETLEASE, F_WRLCK)) {
		fact("error", strerrorname_np(errno));
		return -1;
	}
	return 0;
}

/* Break from the parent; classify how long it took. */
static void breaker(int truncating, double kill_after_ms, pid_t victim)
{
	double t0 = now_ms();
	pid_t killer = 0;
	if (kill_after_ms > 0 && (killer = fork()) == 0) {
		usleep((useconds_t)(kill_after_ms * 1000));
		kill(victim, SIGKILL);
		_exit(0);
	}
	int r;
	if (truncating) {
		r = truncate(path, 0);
	} else {
		r = open(path, O_RDWR);
		if (r >= 0)
			close(r);
	}
	double w = now_ms() - t0;
	if (killer)
		waitpid(killer, NULL, 0);
	fact("breaker_result", r < 0 ? strerrorname_np(errno) : "ok");
	fact("breaker_waited_for", w >= lbt * 800.0 ? "lease-break-time" : (kill_after_ms > 0 && w >= kill_after_ms * 0.8) ? "holder-death" : "holder");
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	const char *sc = argv[1];
	path = argv[2];
	lbt = atoi(argv[3]);
	sig = SIGRTMIN + 1;
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, sig);
	sigprocmask(SIG_BLOCK, &s, NULL);
	int ready[2], go[2];
	pipe(ready);
	pipe(go);
	int truncating = !strcmp(sc, "hung-expiry") || !strcmp(sc, "munmap-before-unregister") ||
			 !strcmp(sc, "fork-child-pins") || !strcmp(sc, "scm-rights");
	int wait_ms = lbt * 1000 + 2000;
	char b;

	pid_t holder = fork();
	if (holder == 0) {
		close(ready[0]);
		close(go[1]);
		int fd = open(path, O_RDWR);
		struct pin pn;
		if (!strcmp(sc, "dup-close")) {
			if (take_lease(fd))
				_exit(1);
			int d = dup(fd);
			close(fd);
			fact("lease_after_close_of_original", fcntl(d, F_GETLEASE) == F_WRLCK ? "write" : "other");
			write(ready[1], "r", 1);
			if (wait_sig(wait_ms)) {
				fact("signalled_process", "holder");
				fact("lease_ended", fcntl(d, F_SETLEASE, F_UNLCK) ? "unlock-failed" : "unlock");
			} else {
				fact("signalled_process", "none");
			}
		} else if (!strcmp(sc, "close-before-unpin")) {
			if (pin(&pn, fd) || take_lease(fd))
				_exit(1);
			close(fd);
			write(ready[1], "r", 1);
			if (wait_sig(wait_ms)) {
				fact("signalled_process", "holder");
				io_uring_unregister_buffers(&pn.ring);
				munmap(pn.p, LEN);
				fact("lease_ended", "munmap");
			}
		} else if (!strcmp(sc, "munmap-before-unregister") || !strcmp(sc, "hung-expiry")) {
			if (pin(&pn, fd) || take_lease(fd))
				_exit(1);
			int hung = !strcmp(sc, "hung-expiry");
			if (!hung) {
				munmap(pn.p, LEN);
				fact("device_write_after_munmap", device_write(&pn, fd));
			}
			write(ready[1], "r", 1);
			if (wait_sig(wait_ms)) {
				fact("signalled_process", "holder");
				if (hung)
					fact("lease_ended", wait_revoked(fd, wait_ms) ? "revoked" : "held");
				else
					fact("lease_ended", fcntl(fd, F_SETLEASE, F_UNLCK) ? "unlock-failed" : "unlock");
			}
			read(go[0], &b, 1);
			fact("device_write_after_break", device_write(&pn, fd));
		} else if (!strcmp(sc, "killed-while-waiting")) {
			if (take_lease(fd))
				_exit(1);
			write(ready[1], "r", 1);
			if (wait_sig(wait_ms))
				fact("signalled_process", "holder");
			sleep(60);
		} else if (!strcmp(sc, "fork-child-pins")) {
			if (pin(&pn, fd) || take_lease(fd))
				_exit(1);
			int cgo[2];
			pipe(cgo);
			pid_t c = fork();
			if (c == 0) {
				read(cgo[0], &b, 1);
				fact("device_write_after_break", device_write(&pn, fd));
				_exit(0);
			}
			close(pn.ring.ring_fd); /* the child holds the pin */
			write(ready[1], "r", 1);
			if (wait_sig(wait_ms)) {
				fact("signalled_process", "holder");
				fact("lease_ended", fcntl(fd, F_SETLEASE, F_UNLCK) ? "unlock-failed" : "unlock");
			}
			read(go[0], &b, 1);
			write(cgo[1], "w", 1);
			waitpid(c, NULL, 0);
		} else if (!strcmp(sc, "scm-rights")) {
			if (pin(&pn, fd) || take_lease(fd))
				_exit(1);
			int sv[2];
			socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
			pid_t rcv = fork();
			if (rcv == 0) {
				/* The receiver: gets the lease fd, keeps the inherited ring. */
				close(sv[0]);
				close(fd);
				char byte, cbuf[CMSG_SPACE(2 * sizeof(int))];
				struct iovec io = { &byte, 1 };
				struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
				recvmsg(sv[1], &m, 0);
				int lfd = *(int *)CMSG_DATA(CMSG_FIRSTHDR(&m));
				read(sv[1], &byte, 1); /* until the sender is gone */
				fact("receiver_lease", fcntl(lfd, F_GETLEASE) == F_WRLCK ? "write" : "other");
				write(ready[1], "r", 1);
				double end = now_ms() + wait_ms;
				int got = 0;
				while (now_ms() < end && !(got = wait_sig(20)))
					if (fcntl(lfd, F_GETLEASE) == F_UNLCK)
						break;
				fact("signalled_process", got ? "receiver" : "none");
				fact("lease_ended", fcntl(lfd, F_GETLEASE) == F_UNLCK ? "revoked" : "held");
				read(go[0], &b, 1);
				fact("device_write_after_break", device_write(&pn, lfd));
				_exit(0);
			}
			close(sv[1]);
			int fds[2] = { fd, pn.ring.ring_fd };
			char byte = 'x', cbuf[CMSG_SPACE(sizeof(fds))];
			struct iovec io = { &byte, 1 };
			struct msghdr m = { .msg_iov = &io, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
			struct cmsghdr *c = CMSG_FIRSTHDR(&m);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(fds));
			memcpy(CMSG_DATA(c), fds, sizeof(fds));
			int r = sendmsg(sv[0], &m, 0);
			fact("ring_over_scm_rights", r < 0 ? strerrorname_np(errno) : "ok");
			if (r < 0) {
				m.msg_controllen = CMSG_SPACE(sizeof(int));
				c->cmsg_len = CMSG_LEN(sizeof(int));
				sendmsg(sv[0], &m, 0);
			}
			_exit(0); /* the sender exits; the receiver carries on */
		}
		_exit(0);
	}
	close(ready[1]);
	close(go[0]);
	read(ready[0], &b, 1);
	if (!strcmp(sc, "killed-while-waiting")) {
		breaker(0, 300, holder);
		/* Nobody answered: whether the kernel let the lease go with its holder is what
		 * /proc/locks says about the file (reaped first, so its files are closed). */
		waitpid(holder, NULL, 0);
		fact("lease_ended", lease_in_proc_locks() ? "held" : "holder-killed");
	} else
		breaker(truncating, 0, 0);
	write(go[1], "g", 1);
	waitpid(holder, NULL, 0);
	/* Let grandchildren (forked child, receiver) finish their output. */
	usleep(300000);
	return 0;
}
