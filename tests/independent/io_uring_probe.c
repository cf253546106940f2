/*
 * An independent io_uring fixed-buffer probe for cross-checking pinstorm's probe.
 *
 * It shares no code with pinstorm: raw io_uring_setup / io_uring_register syscalls, plain
 * mmap, and the kernel's own errno name. Build: cc -O2 -o probe io_uring_probe.c
 *
 * usage: probe anon|memfd|file:PATH|dev:PATH shared|private rw|ro BYTES
 *   file:PATH creates PATH (O_EXCL) and writes BYTES into it; dev:PATH opens an existing
 *   device (e.g. /dev/dax0.0) and maps it as it is.
 * prints: ok, or the errno name of IORING_REGISTER_BUFFERS (e.g. EFAULT)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "probe: %s: %s\n", what, strerror(errno));
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s anon|memfd|file:PATH shared|private rw|ro BYTES\n", argv[0]);
		return 2;
	}
	const char *kind = argv[1];
	int shared = strcmp(argv[2], "shared") == 0;
	int rw = strcmp(argv[3], "rw") == 0;
	size_t len = strtoull(argv[4], NULL, 0);
	int prot = PROT_READ | (rw ? PROT_WRITE : 0);
	int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_POPULATE;
	int fd = -1;
	const char *path = NULL;

	if (strcmp(kind, "anon") == 0) {
		flags |= MAP_ANONYMOUS;
	} else if (strcmp(kind, "memfd") == 0) {
		fd = memfd_create("independent-probe", MFD_CLOEXEC);
		if (fd < 0)
			die("memfd_create");
	} else if (strncmp(kind, "file:", 5) == 0) {
		path = kind + 5;
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			die("open");
	} else if (strncmp(kind, "dev:", 4) == 0) {
		fd = open(kind + 4, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
		if (fd < 0)
			die("open");
	} else {
		fprintf(stderr, "probe: unknown kind %s\n", kind);
		return 2;
	}
	if (fd >= 0 && strncmp(kind, "dev:", 4) != 0) {
		/* Real blocks with data, not a sparse file. */
		char *buf = malloc(len);
		memset(buf, 0xa5, len);
		if (pwrite(fd, buf, len, 0) != (ssize_t)len)
			die("pwrite");
		free(buf);
	}
	char *p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	for (size_t off = 0; off < len; off += 4096) {
		volatile char c = p[off];
		if (rw)
			p[off] = c;
	}

	struct io_uring_params params;
	memset(&params, 0, sizeof(params));
	int ring = syscall(__NR_io_uring_setup, 4, &params);
	if (ring < 0)
		die("io_uring_setup");
	struct iovec iov = { .iov_base = p, .iov_len = len };
	int r = syscall(__NR_io_uring_register, ring, IORING_REGISTER_BUFFERS, &iov, 1);
	int err = errno;
	if (r == 0) {
		puts("ok");
		syscall(__NR_io_uring_register, ring, IORING_UNREGISTER_BUFFERS, NULL, 0);
	} else {
		puts(strerrorname_np(err));
	}
	close(ring);
	munmap(p, len);
	if (path)
		unlink(path);
	return 0;
}
