/*
 * An independent witness for pinstorm's diverged and moved oracles.
 *
 * Shares no code with pinstorm (liburing, plain syscalls). It maps a buffer, registers it as
 * an io_uring fixed buffer (a FOLL_LONGTERM pin), runs one memory-management operation on
 * the whole buffer while the pin is held, then checks both directions:
 *   - the "device" writes 0xc3 into page 0 with READ_FIXED; does the mapping show it?
 *   - the process writes 0x3c into page 1 through the mapping; does WRITE_FIXED read it?
 * and compares the page frames of pages 0 and 1 in /proc/self/pagemap before the operation
 * and after the checks.
 *
 * Build: cc -O2 -o probe mm_probe.c -luring
 * usage: probe anon|memfd private|shared OP BYTES
 *   OP: none, dontneed, free, remove, pageout, cold, fork, mremap-move, mremap-grow, compact,
 *       soft-offline (MADV_SOFT_OFFLINE of the whole buffer), hwpoison (MADV_HWPOISON of page
 *       2, then MADV_DONTNEED of it; pages 0 and 1 are checked as usual): lab guests only
 * prints: "<diverged|same> <moved|kept|unknown>", or "op:ERRNO" when the operation failed,
 *         or the errno name of the registration when the kernel refused the pin.
 *         "unknown": the frames read as 0 (no CAP_SYS_ADMIN) or a page was not present.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096

/* <linux/mman.h> values; glibc's <sys/mman.h> may not carry them. */
#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif

static void die(const char *what, int err)
{
	fprintf(stderr, "probe: %s: %s\n", what, strerror(err));
	exit(2);
}

/* An action-required memory-failure SIGBUS sent to the caller of MADV_HWPOISON (newer
 * kernels, for a page they cannot recover): noted, and the call's result printed with it. */
static volatile sig_atomic_t mce_sigbus;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	(void)ctx;
	if (si->si_code == BUS_MCEERR_AR || si->si_code == BUS_MCEERR_AO) {
		mce_sigbus = 1;
		return;
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static int op_failed(const char *op, int err)
{
	printf("%s:%s%s\n", op, err ? strerrorname_np(err) : "0", mce_sigbus ? "+SIGBUS" : "");
	return 0;
}

/* The frame of the page at addr: 0 when not present or hidden (no CAP_SYS_ADMIN). */
static uint64_t pfn(void *addr)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t e = 0;
	if (fd < 0)
		die("open pagemap", errno);
	if (pread(fd, &e, 8, (uintptr_t)addr / PG * 8) != 8)
		die("pread pagemap", errno);
	close(fd);
	if (!(e >> 63))
		return 0;
	return e & ((1ULL << 55) - 1);
}

static void run_fixed(struct io_uring *ring, int write, int fd, void *buf)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (write)
		io_uring_prep_write_fixed(sqe, fd, buf, PG, 0, 0);
	else
		io_uring_prep_read_fixed(sqe, fd, buf, PG, 0, 0);
	io_uring_submit(ring);
	struct io_uring_cqe *cqe;
	int r = io_uring_wait_cqe(ring, &cqe);
	if (r)
		die("wait", -r);
	if (cqe->res != PG)
		die(write ? "WRITE_FIXED" : "READ_FIXED", cqe->res < 0 ? -cqe->res : EIO);
	io_uring_cqe_seen(ring, cqe);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s anon|memfd private|shared OP BYTES\n", argv[0]);
		return 2;
	}
	const char *kind = argv[1], *op = argv[3];
	int shared = strcmp(argv[2], "shared") == 0;
	size_t len = strtoull(argv[4], NULL, 0);
	int flags = shared ? MAP_SHARED : MAP_PRIVATE;
	char *p;

	if (strcmp(kind, "anon") == 0) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
	} else {
		int fd = memfd_create("mm-probe", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, len))
			die("memfd", errno);
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	}
	if (p == MAP_FAILED)
		die("mmap", errno);
	memset(p, 0x5a, len);

	struct io_uring ring;
	int r = io_uring_queue_init(4, &ring, 0);
	if (r)
		die("io_uring_queue_init", -r);
	struct iovec iov = { .iov_base = p, .iov_len = len };
	r = io_uring_register_buffers(&ring, &iov, 1);
	if (r) {
		puts(strerrorname_np(-r));
		return 0;
	}
	uint64_t before0 = pfn(p), before1 = pfn(p + PG);

	if (strcmp(op, "dontneed") == 0) {
		if (madvise(p, len, MADV_DONTNEED))
			return op_failed(op, errno);
	} else if (strcmp(op, "free") == 0) {
		if (madvise(p, len, MADV_FREE))
			return op_failed(op, errno);
	} else if (strcmp(op, "remove") == 0) {
		if (madvise(p, len, MADV_REMOVE))
			return op_failed(op, errno);
	} else if (strcmp(op, "pageout") == 0) {
		if (madvise(p, len, MADV_PAGEOUT))
			return op_failed(op, errno);
	} else if (strcmp(op, "cold") == 0) {
		if (madvise(p, len, MADV_COLD))
			return op_failed(op, errno);
	} else if (strcmp(op, "fork") == 0) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork", errno);
		if (pid == 0) {
			memset(p, 0x11, 2 * PG);
			_exit(0);
		}
		memset(p, 0x22, 2 * PG);
		int st;
		if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
			die("child", ECHILD);
	} else if (strcmp(op, "mremap-move") == 0) {
		char *away = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (away == MAP_FAILED)
			die("mmap(reserve)", errno);
		if (mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, away) == MAP_FAILED)
			return op_failed(op, errno);
		if (mremap(away, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p) == MAP_FAILED)
			return op_failed(op, errno);
	} else if (strcmp(op, "mremap-grow") == 0) {
		/* Move to a reserved place with room after it, grow in place, shrink, move back. */
		char *away = mmap(NULL, 2 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (away == MAP_FAILED || munmap(away + len, len))
			die("mmap(reserve)", errno);
		if (mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, away) == MAP_FAILED)
			return op_failed(op, errno);
		if (mremap(away, len, 2 * len, 0) == MAP_FAILED)
			return op_failed(op, errno);
		if (mremap(away, 2 * len, len, 0) == MAP_FAILED)
			return op_failed(op, errno);
		if (mremap(away, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p) == MAP_FAILED)
			return op_failed(op, errno);
	} else if (strcmp(op, "compact") == 0) {
		int fd = open("/proc/sys/vm/compact_memory", O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "1", 1) != 1)
			return op_failed(op, errno);
		close(fd);
	} else if (strcmp(op, "soft-offline") == 0) {
		if (madvise(p, len, MADV_SOFT_OFFLINE))
			return op_failed(op, errno);
	} else if (strcmp(op, "hwpoison") == 0) {
		if (len < 3 * PG)
			die("hwpoison needs three pages", EINVAL);
		struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
		sigemptyset(&sa.sa_mask);
		sigaction(SIGBUS, &sa, NULL);
		if (madvise(p + 2 * PG, PG, MADV_HWPOISON))
			return op_failed(op, errno);
		if (mce_sigbus)
			return op_failed(op, 0);
		if (madvise(p + 2 * PG, PG, MADV_DONTNEED))
			die("madvise(DONTNEED) after hwpoison", errno);
	} else if (strcmp(op, "none") != 0) {
		return 2;
	}

	/* Device -> process: the "device" writes page 0 through the pin. */
	char pattern[PG], back[PG];
	int src = memfd_create("src", MFD_CLOEXEC);
	memset(pattern, 0xc3, PG);
	if (pwrite(src, pattern, PG, 0) != PG)
		die("pwrite(src)", errno);
	run_fixed(&ring, 0, src, p);
	memcpy(back, p, PG);
	int diverged = memcmp(back, pattern, PG) != 0;

	/* Process -> device: the process writes page 1, the "device" reads it through the pin. */
	memset(p + PG, 0x3c, PG);
	int dst = memfd_create("dst", MFD_CLOEXEC);
	if (ftruncate(dst, PG))
		die("ftruncate(dst)", errno);
	run_fixed(&ring, 1, dst, p + PG);
	if (pread(dst, back, PG, 0) != PG)
		die("pread(dst)", errno);
	memset(pattern, 0x3c, PG);
	diverged |= memcmp(back, pattern, PG) != 0;

	uint64_t after0 = pfn(p), after1 = pfn(p + PG);
	const char *moved;
	if (!before0 || !before1 || !after0 || !after1)
		moved = "unknown";
	else
		moved = (before0 != after0 || before1 != after1) ? "moved" : "kept";
	printf("%s %s\n", diverged ? "diverged" : "same", moved);

	io_uring_unregister_buffers(&ring);
	io_uring_queue_exit(&ring);
	return 0;
}
