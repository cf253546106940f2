/*
 * An independent io_uring register/unregister loop, the yardstick for pinstorm's bench cycle
 * and its baseline. It shares no code with pinstorm: raw io_uring_setup / io_uring_register
 * syscalls, plain mmap, CLOCK_MONOTONIC around each call.
 * Build: cc -O2 -o pin_cycle_loop pin_cycle_loop.c
 *
 * usage: pin_cycle_loop [--size BYTES] [--file PATH] [--iters N] [--warmup N] [--report]
 *   memory: BYTES (default 2 MiB) of MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, nothing
 *   else (no madvise: THP as the system has it); with --file, PATH is created (O_EXCL),
 *   filled and mapped MAP_SHARED | MAP_POPULATE (a tmpfs file under /dev/shm, say), then
 *   unlinked.
 *   ring: io_uring_setup(1, all parameters zero), its queues never mapped.
 * prints one line of key=value:
 *   cycles, total_ns (sum of register + unregister over the measured cycles),
 *   register_p50_ns, unregister_p50_ns, cycle_p50_ns;
 *   with --report, what the kernel says of the region instead of timing it: pages,
 *   present, exclusive, file_or_shared, swapped (pagemap), thp, compound (kpageflags, root
 *   only; -1 otherwise), pmd_aligned, vmflags and thp_eligible (smaps of its VMA).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "pin_cycle_loop: %s: %s\n", what, strerror(errno));
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, long n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	return n ? v[n / 2] : 0;
}

/* The smaps lines VmFlags and THPeligible of the VMA holding addr. */
static void vma_facts(uintptr_t addr, char *vmflags, size_t vlen, int *thp_eligible)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in = 0;

	if (!f)
		die("/proc/self/smaps");
	*thp_eligible = -1;
	vmflags[0] = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long start, end;
		char c;
		if (sscanf(line, "%lx-%lx %c", &start, &end, &c) == 3 && strchr(line, '-') &&
		    line[strspn(line, "0123456789abcdef")] == '-') {
			in = addr >= start && addr < end;
			continue;
		}
		if (!in)
			continue;
		sscanf(line, "THPeligible: %d", thp_eligible);
		if (strncmp(line, "VmFlags:", 8) == 0) {
			char *p = line + 8;
			while (*p == ' ')
				p++;
			size_t n = strcspn(p, "\n");
			while (n > 0 && p[n - 1] == ' ')
				n--;
			p[n] = 0;
			snprintf(vmflags, vlen, "%.*s", (int)(vlen - 1), p);
		}
	}
	fclose(f);
}

static void report(char *p, size_t len)
{
	long pages = 0, present = 0, exclusive = 0, shared = 0, swapped = 0, thp = 0, compound = 0;
	int pm = open("/proc/self/pagemap", O_RDONLY);
	int kpf = open("/proc/kpageflags", O_RDONLY);
	char vmflags[512];
	int eligible;

	if (pm < 0)
		die("/proc/self/pagemap");
	for (size_t off = 0; off < len; off += 4096, pages++) {
		uint64_t e = 0, flags = 0;
		if (pread(pm, &e, 8, ((uintptr_t)p + off) / 4096 * 8) != 8)
			die("pread pagemap");
		present += (e >> 63) & 1;
		swapped += (e >> 62) & 1;
		shared += (e >> 61) & 1;
		exclusive += (e >> 56) & 1;
		uint64_t pfn = e & ((1ull << 55) - 1);
		if (kpf >= 0 && pfn && pread(kpf, &flags, 8, pfn * 8) == 8) {
			thp += (flags >> 22) & 1;                          /* KPF_THP */
			compound += ((flags >> 15) & 1) | ((flags >> 16) & 1); /* head | tail */
		}
	}
	if (kpf < 0)
		thp = compound = -1;
	vma_facts((uintptr_t)p, vmflags, sizeof(vmflags), &eligible);
	printf("pages=%ld present=%ld exclusive=%ld file_or_shared=%ld swapped=%ld thp=%ld "
	       "compound=%ld pmd_aligned=%d thp_eligible=%d vmflags=%s\n",
	       pages, present, exclusive, shared, swapped, thp, compound,
	       ((uintptr_t)p & ((2u << 20) - 1)) == 0, eligible, vmflags);
}

int main(int argc, char **argv)
{
	size_t len = 2u << 20;
	const char *file = NULL;
	long iters = 2000, warmup = 16;
	int do_report = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--report")) {
			do_report = 1;
		} else if (v && !strcmp(a, "--size")) {
			len = strtoull(v, NULL, 0), i++;
		} else if (v && !strcmp(a, "--file")) {
			file = v, i++;
		} else if (v && !strcmp(a, "--iters")) {
			iters = strtol(v, NULL, 0), i++;
		} else if (v && !strcmp(a, "--warmup")) {
			warmup = strtol(v, NULL, 0), i++;
		} else {
			fprintf(stderr, "usage: %s [--size BYTES] [--file PATH] [--iters N] "
					"[--warmup N] [--report]\n", argv[0]);
			return 2;
		}
	}
	if (len == 0 || iters <= 0 || warmup < 0) {
		fprintf(stderr, "pin_cycle_loop: size and iters must be positive\n");
		return 2;
	}

	int fd = -1, flags = MAP_POPULATE;
	if (file) {
		fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			die("open");
		char *buf = malloc(len);
		memset(buf, 0xa5, len);
		if (pwrite(fd, buf, len, 0) != (ssize_t)len)
			die("pwrite");
		free(buf);
		unlink(file);
		flags |= MAP_SHARED;
	} else {
		flags |= MAP_PRIVATE | MAP_ANONYMOUS;
	}
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (do_report) {
		report(p, len);
		return 0;
	}

	struct io_uring_params params;
	memset(&params, 0, sizeof(params));
	int ring = syscall(__NR_io_uring_setup, 1, &params);
	if (ring < 0)
		die("io_uring_setup");
	struct iovec iov = { .iov_base = p, .iov_len = len };
	uint64_t *reg = calloc(iters, 8), *unreg = calloc(iters, 8), *cyc = calloc(iters, 8);
	uint64_t total = 0;
	for (long i = -warmup; i < iters; i++) {
		uint64_t t0 = now_ns();
		if (syscall(__NR_io_uring_register, ring, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
			die("IORING_REGISTER_BUFFERS");
		uint64_t t1 = now_ns();
		if (syscall(__NR_io_uring_register, ring, IORING_UNREGISTER_BUFFERS, NULL, 0) < 0)
			die("IORING_UNREGISTER_BUFFERS");
		uint64_t t2 = now_ns();
		if (i >= 0) {
			reg[i] = t1 - t0;
			unreg[i] = t2 - t1;
			cyc[i] = t2 - t0;
			total += t2 - t0;
		}
	}
	printf("cycles=%ld total_ns=%" PRIu64 " register_p50_ns=%" PRIu64
	       " unregister_p50_ns=%" PRIu64 " cycle_p50_ns=%" PRIu64 "\n",
	       iters, total, median(reg, iters), median(unreg, iters), median(cyc, iters));
	return 0;
}
