/*
 * An independent lost-write probe for cross-checking pinstorm's storm oracle.
 *
 * Shares no code with pinstorm (liburing, plain syscalls). It registers a shared read-write
 * mapping of a file as an io_uring fixed buffer, changes the file's layout (truncate to 0 and
 * back, or punch the whole range), lets the kernel write through the pin with READ_FIXED,
 * and reads the file back.
 *
 * Build: cc -O2 -o probe lost_write_probe.c -luring
 * usage: probe memfd|memfd-huge|file:PATH truncate|punch|none BYTES
 * prints: lost (the write is not in the file), kept (it is), or the errno name of the
 *         registration when the kernel refused the pin.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void die(const char *what, int err)
{
	fprintf(stderr, "probe: %s: %s\n", what, strerror(err));
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s memfd|memfd-huge|file:PATH truncate|punch|none BYTES\n", argv[0]);
		return 2;
	}
	const char *kind = argv[1], *op = argv[2];
	size_t len = strtoull(argv[3], NULL, 0);
	const char *path = NULL;
	int fd;

	if (strcmp(kind, "memfd") == 0)
		fd = memfd_create("lost-write-probe", MFD_CLOEXEC);
	else if (strcmp(kind, "memfd-huge") == 0)
		fd = memfd_create("lost-write-probe", MFD_CLOEXEC | MFD_HUGETLB);
	else if (strncmp(kind, "file:", 5) == 0)
		fd = open(path = kind + 5, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	else
		return 2;
	if (fd < 0)
		die("create", errno);
	/* hugetlbfs has no write(2): allocate with fallocate everywhere. */
	if (fallocate(fd, 0, 0, len))
		die("fallocate", errno);
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED)
		die("mmap", errno);

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

	if (strcmp(op, "truncate") == 0) {
		if (ftruncate(fd, 0) || ftruncate(fd, len))
			die("ftruncate", errno);
	} else if (strcmp(op, "punch") == 0) {
		if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, len))
			die("punch", errno);
	}

	/* The "device" writes 4 KiB of 0xc3 into the registered buffer at offset 0. */
	int src = memfd_create("src", MFD_CLOEXEC);
	char pattern[4096];
	memset(pattern, 0xc3, sizeof(pattern));
	if (pwrite(src, pattern, sizeof(pattern), 0) != sizeof(pattern))
		die("pwrite(src)", errno);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_read_fixed(sqe, src, p, sizeof(pattern), 0, 0);
	io_uring_submit(&ring);
	struct io_uring_cqe *cqe;
	r = io_uring_wait_cqe(&ring, &cqe);
	if (r)
		die("wait", -r);
	if (cqe->res != (int)sizeof(pattern))
		die("READ_FIXED", cqe->res < 0 ? -cqe->res : EIO);
	io_uring_cqe_seen(&ring, cqe);

	char back[4096];
	if (pread(fd, back, sizeof(back), 0) != sizeof(back))
		die("pread", errno);
	puts(memcmp(back, pattern, sizeof(back)) == 0 ? "kept" : "lost");

	io_uring_unregister_buffers(&ring);
	io_uring_queue_exit(&ring);
	munmap(p, len);
	if (path)
		unlink(path);
	return 0;
}
