/*
 * An independent RDMA WRITE placement probe: where does each byte of one RDMA WRITE land in
 * a pinned or on-demand-paging (ODP) memory region?
 *
 * Shares no code with pinstorm (plain libibverbs). Two RC queue pairs on the same port are
 * connected to each other with the path MTU given; for each OFFSET+LEN it maps fresh
 * anonymous memory (zeros), registers it (`pinned`: LOCAL_WRITE | REMOTE_WRITE |
 * REMOTE_READ; `odp`: the same | ON_DEMAND), posts one RDMA WRITE of LEN pseudo-random
 * non-zero bytes to address + OFFSET, waits for the completion and prints the region run by
 * run: the write's own data where it belongs, its data that belongs elsewhere ("data of
 * A..B"), other changed bytes, and unchanged (zero) bytes in the target. Then it reads the
 * target back with an RDMA READ and says whether that matches what the CPU sees.
 *
 * Build: cc -O2 -o rdma_write_map_probe rdma_write_map_probe.c -libverbs
 * usage: rdma_write_map_probe [-d DEV] [-s REGION] [-m] pinned|odp MTU OFFSET+LEN...
 *   e.g. rdma_write_map_probe odp 1024 1230+61 0+4096 100+3000
 * prints per write: "write OFF+LEN mtu M KIND: exact" or "...: WRONG" and the runs (with -m,
 *   whether the region is byte for byte what the model below predicts);
 *   "notrun: ..." (exit 0) when the device has no ODP or no active port.
 * On soft-RoCE: modprobe rdma_rxe; ip link add d0 type dummy; ip link set d0 up;
 *   rdma link add rxe0 type rxe netdev d0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what, int err)
{
	fprintf(stderr, "probe: %s: %s\n", what, strerror(err));
	exit(2);
}

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *cq;
static struct ibv_qp *qp[2];
static union ibv_gid gid;
static int gid_index, port = 1;
static uint64_t wr_id;

static void connect_qp(struct ibv_qp *q, uint32_t remote_qpn, enum ibv_mtu mtu)
{
	struct ibv_qp_attr a;
	int rc;

	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	a.port_num = port;
	a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
			    IBV_ACCESS_REMOTE_READ;
	rc = ibv_modify_qp(q, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
				       IBV_QP_ACCESS_FLAGS);
	if (rc)
		die("ibv_modify_qp(INIT)", rc);
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = mtu;
	a.dest_qp_num = remote_qpn;
	a.rq_psn = 0;
	a.max_dest_rd_atomic = 1;
	a.min_rnr_timer = 12;
	a.ah_attr.is_global = 1;
	a.ah_attr.grh.dgid = gid;
	a.ah_attr.grh.sgid_index = gid_index;
	a.ah_attr.grh.hop_limit = 1;
	a.ah_attr.port_num = port;
	rc = ibv_modify_qp(q, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
				       IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
				       IBV_QP_MIN_RNR_TIMER);
	if (rc)
		die("ibv_modify_qp(RTR)", rc);
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;
	a.sq_psn = 0;
	a.max_rd_atomic = 1;
	rc = ibv_modify_qp(q, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
				       IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
	if (rc)
		die("ibv_modify_qp(RTS)", rc);
}

/* One RDMA WRITE (or READ) between local and remote, waited for; the completion status. */
static int transfer(int write, void *local, uint32_t lkey, uint64_t remote, uint32_t rkey,
		    uint32_t len)
{
	struct ibv_sge sge = { .addr = (uintptr_t)local, .length = len, .lkey = lkey };
	struct ibv_send_wr wr, *bad;
	struct ibv_wc wc;
	struct timespec t0, t;
	int rc;

	memset(&wr, 0, sizeof(wr));
	wr.wr_id = ++wr_id;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.opcode = write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.wr.rdma.remote_addr = remote;
	wr.wr.rdma.rkey = rkey;
	rc = ibv_post_send(qp[0], &wr, &bad);
	if (rc)
		die("ibv_post_send", rc);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		rc = ibv_poll_cq(cq, 1, &wc);
		if (rc < 0)
			die("ibv_poll_cq", EIO);
		if (rc == 1 && wc.wr_id == wr_id)
			return wc.status;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec > 5) {
			fprintf(stderr, "probe: no completion in 5 s\n");
			exit(2);
		}
	}
}

/* The run of `after` starting at p, as a printable kind. */
enum kind { OWN, UNCHANGED, MOVED, OTHER };

static void show_run(size_t a, size_t b, enum kind k, size_t from, size_t off, size_t len)
{
	int in_target = a < off + len && b > off;

	if (k == UNCHANGED && !in_target)
		return;
	printf("  %zu..%zu: ", a, b);
	switch (k) {
	case OWN:
		printf("its data, where it belongs\n");
		break;
	case UNCHANGED:
		printf("unchanged (never written)\n");
		break;
	case MOVED:
		printf("data of %zu..%zu (%+ld bytes)%s\n", from, from + (b - a),
		       (long)a - (long)from, in_target ? "" : ", outside the target");
		break;
	case OTHER:
		printf("changed, not its data\n");
		break;
	}
}

/* Print the region run by run; 1 if anything is not where it belongs. */
static int map(const uint8_t *after, size_t region, const uint8_t *data, size_t off,
	       size_t len)
{
	enum kind cur = UNCHANGED;
	size_t start = 0, src = 0, from = 0, p;
	int wrong = 0;

	for (p = 0; p <= region; p++) {
		enum kind k = UNCHANGED;
		size_t s = 0;

		if (p < region) {
			if (p >= off && p < off + len && after[p] == data[p - off]) {
				k = OWN;
			} else if (cur == MOVED && src + 1 < len && after[p] == data[src + 1]) {
				k = MOVED;
				s = src + 1;
			} else if (after[p] == 0) {
				k = UNCHANGED;
			} else {
				size_t n = region - p < 16 ? region - p : 16;
				const uint8_t *hit = n >= 8 ? memmem(data, len, after + p, n) : NULL;

				k = hit ? MOVED : OTHER;
				s = hit ? (size_t)(hit - data) : 0;
			}
		}
		if (p == region || k != cur || (k == MOVED && s != src + 1)) {
			if (p > start) {
				show_run(start, p, cur, from, off, len);
				if (cur != OWN && !(cur == UNCHANGED &&
						    (p <= off || start >= off + len)))
					wrong = 1;
			}
			start = p;
			from = off + s;
		}
		cur = k;
		src = s;
	}
	return wrong;
}

/*
 * -m: compare the region with what it would hold if the responder copied each packet to the
 * start of the page its address is in (the in-page offset dropped), and, for a packet that
 * crosses a page boundary, copied the packet's first bytes again to the start of the next
 * page (the source pointer not advanced). The number of bytes that differ from that model.
 */
static size_t model_diff(const uint8_t *after, size_t region, const uint8_t *data,
			 size_t off, size_t len, size_t mtu, size_t *first)
{
	uint8_t *m = calloc(region, 1);
	size_t k, p, diff = 0;

	for (k = 0; k * mtu < len; k++) {
		size_t iova = off + k * mtu, plen = len - k * mtu < mtu ? len - k * mtu : mtu;
		size_t page = iova / 4096 * 4096, bytes = 4096 - iova % 4096;

		while (plen > 0 && page < region) {
			if (bytes > plen)
				bytes = plen;
			memcpy(m + page, data + k * mtu, bytes);
			plen -= bytes;
			page += 4096;
			bytes = 4096;
		}
	}
	for (p = 0; p < region; p++)
		if (m[p] != after[p] && !diff++)
			*first = p;
	free(m);
	return diff;
}

int main(int argc, char **argv)
{
	const char *dev_name = NULL;
	size_t region = 64 * 1024;
	int c, i, odp, mtu_bytes, model = 0;
	enum ibv_mtu mtu;

	while ((c = getopt(argc, argv, "d:s:m")) != -1) {
		if (c == 'm')
			model = 1;
		else if (c == 'd')
			dev_name = optarg;
		else if (c == 's')
			region = strtoull(optarg, NULL, 0);
		else
			return 2;
	}
	if (argc - optind < 3) {
		fprintf(stderr, "usage: %s [-d DEV] [-s REGION] [-m] pinned|odp MTU OFFSET+LEN...\n",
			argv[0]);
		return 2;
	}
	odp = !strcmp(argv[optind], "odp");
	mtu_bytes = atoi(argv[optind + 1]);
	switch (mtu_bytes) {
	case 256: mtu = IBV_MTU_256; break;
	case 512: mtu = IBV_MTU_512; break;
	case 1024: mtu = IBV_MTU_1024; break;
	case 2048: mtu = IBV_MTU_2048; break;
	case 4096: mtu = IBV_MTU_4096; break;
	default: fprintf(stderr, "probe: MTU must be 256..4096\n"); return 2;
	}

	int n;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (!list || n == 0) {
		printf("notrun: no RDMA device\n");
		return 0;
	}
	for (i = 0; i < n; i++)
		if (!dev_name || !strcmp(ibv_get_device_name(list[i]), dev_name))
			break;
	if (i == n)
		die("no such device", ENODEV);
	ctx = ibv_open_device(list[i]);
	if (!ctx)
		die("ibv_open_device", errno);
	struct ibv_device_attr_ex dx;
	memset(&dx, 0, sizeof(dx));
	if (ibv_query_device_ex(ctx, NULL, &dx))
		die("ibv_query_device_ex", errno);
	if (odp && (!(dx.odp_caps.general_caps & IBV_ODP_SUPPORT) ||
		    !(dx.odp_caps.per_transport_caps.rc_odp_caps & IBV_ODP_SUPPORT_WRITE))) {
		printf("notrun: %s has no ODP RC write support\n", ibv_get_device_name(list[i]));
		return 0;
	}
	struct ibv_gid_entry e[64];
	ssize_t ne = ibv_query_gid_table(ctx, e, 64, 0), j;
	gid_index = -1;
	for (j = 0; j < ne; j++)
		if (e[j].port_num == (uint32_t)port && e[j].gid_type == IBV_GID_TYPE_ROCE_V2) {
			gid = e[j].gid;
			gid_index = e[j].gid_index;
			break;
		}
	if (gid_index < 0) {
		printf("notrun: no RoCE v2 GID on port %d\n", port);
		return 0;
	}
	pd = ibv_alloc_pd(ctx);
	cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
	if (!pd || !cq)
		die("ibv_alloc_pd/ibv_create_cq", errno);
	for (i = 0; i < 2; i++) {
		struct ibv_qp_init_attr qa;
		memset(&qa, 0, sizeof(qa));
		qa.send_cq = qa.recv_cq = cq;
		qa.qp_type = IBV_QPT_RC;
		qa.cap.max_send_wr = qa.cap.max_recv_wr = 4;
		qa.cap.max_send_sge = qa.cap.max_recv_sge = 1;
		qp[i] = ibv_create_qp(pd, &qa);
		if (!qp[i])
			die("ibv_create_qp", errno);
	}
	connect_qp(qp[0], qp[1]->qp_num, mtu);
	connect_qp(qp[1], qp[0]->qp_num, mtu);

	uint8_t *staging = malloc(region), *seen = malloc(region);
	struct ibv_mr *smr = ibv_reg_mr(pd, staging, region, IBV_ACCESS_LOCAL_WRITE);
	if (!staging || !seen || !smr)
		die("staging buffer", errno);
	int wrong_any = 0;
	for (i = optind + 2; i < argc; i++) {
		size_t off, len;
		if (sscanf(argv[i], "%zu+%zu", &off, &len) != 2 || !len || off + len > region) {
			fprintf(stderr, "probe: bad OFFSET+LEN %s (region %zu)\n", argv[i], region);
			return 2;
		}
		uint8_t *mem = mmap(NULL, region, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			die("mmap", errno);
		memset(mem, 0, region); /* fault every page in: zeros are "before" */
		int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
			     IBV_ACCESS_REMOTE_READ | (odp ? IBV_ACCESS_ON_DEMAND : 0);
		struct ibv_mr *mr = ibv_reg_mr(pd, mem, region, access);
		if (!mr)
			die("ibv_reg_mr", errno);
		uint64_t x = 0x9e3779b97f4a7c15ULL ^ (off << 20) ^ len;
		for (size_t k = 0; k < len; k++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			staging[k] = (uint8_t)x ? (uint8_t)x : 0x5a;
		}
		uint8_t *data = malloc(len);
		memcpy(data, staging, len);
		int st = transfer(1, staging, smr->lkey, (uintptr_t)mem + off, mr->rkey, len);
		memcpy(seen, mem, region);
		printf("write %zu+%zu mtu %d %s: ", off, len, mtu_bytes, odp ? "odp" : "pinned");
		if (st != IBV_WC_SUCCESS) {
			printf("completion %s\n", ibv_wc_status_str(st));
			wrong_any = 1;
		} else {
			int wrong = 0;
			for (size_t k = 0; k < region && !wrong; k++)
				wrong = k >= off && k < off + len ? seen[k] != data[k - off] : seen[k];
			printf("%s\n", wrong ? "WRONG" : "exact");
			if (wrong)
				map(seen, region, data, off, len);
			if (wrong && model) {
				size_t first = 0;
				size_t d = model_diff(seen, region, data, off, len, mtu_bytes, &first);
				if (d)
					printf("  model: %zu bytes differ from it, the first at %zu\n", d, first);
				else
					printf("  model: every byte as modelled (each packet at the start of its page, its first bytes again at the start of each further page)\n");
			}
			memset(staging, 0, len);
			st = transfer(0, staging, smr->lkey, (uintptr_t)mem + off, mr->rkey, len);
			if (st != IBV_WC_SUCCESS)
				printf("  read back: completion %s\n", ibv_wc_status_str(st));
			else if (memcmp(staging, seen + off, len))
				printf("  read back: differs from what the CPU sees in the target\n");
			wrong_any |= wrong;
		}
		free(data);
		ibv_dereg_mr(mr);
		munmap(mem, region);
	}
	return wrong_any;
}
