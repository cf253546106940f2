// SPDX-License-Identifier: GPL-2.0-only
//
// The verbs pinstorm needs that rdma-core only ships as `static inline` functions in
// <infiniband/verbs.h>. bindgen (and so ibverbs-sys, the ibverbs crate's ffi module) cannot
// bind a static inline function: it has no symbol in libibverbs.so. Each one is wrapped here,
// compiled against the system's verbs.h (libibverbs-dev), and takes or returns only plain
// integers and pointers the Rust side passes through opaquely, so no struct layout has to
// agree between the rdma-core the bindings were generated from and the one installed.
//
// Why each is inline in rdma-core: they dispatch through the provider's ops table
// (verbs_context / ibv_context_ops) so the data path never enters libibverbs.so proper.

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <infiniband/verbs.h>

// ibv_query_port is a macro around an inline function (ABI compat of ibv_port_attr).
int pinstorm_query_port(struct ibv_context *ctx, uint8_t port, uint32_t *state,
			uint32_t *link_layer, uint32_t *active_mtu, uint32_t *lid,
			uint32_t *gid_tbl_len, uint32_t *max_msg_sz)
{
	struct ibv_port_attr a;
	int rc;

	memset(&a, 0, sizeof(a));
	rc = ibv_query_port(ctx, port, &a);
	if (rc)
		return rc;
	*state = a.state;
	*link_layer = a.link_layer;
	*active_mtu = a.active_mtu;
	*lid = a.lid;
	*gid_tbl_len = a.gid_tbl_len;
	*max_msg_sz = a.max_msg_sz;
	return 0;
}

// The GID to address this port with in a loopback RC connection: for RoCE the first RoCE v2
// entry (rxe and most NICs route v2 only), else the first valid entry. Returns 0 and fills
// `gid` (16 bytes), `index`, `type` (enum ibv_gid_type); ENOENT when the table is empty.
int pinstorm_pick_gid(struct ibv_context *ctx, uint8_t port, uint8_t *gid,
		      uint32_t *index, uint32_t *type)
{
	struct ibv_gid_entry e[256];
	ssize_t n = ibv_query_gid_table(ctx, e, 256, 0);
	ssize_t i, pick = -1;

	if (n < 0)
		return (int)-n;
	for (i = 0; i < n; i++) {
		if (e[i].port_num != port)
			continue;
		if (e[i].gid_type == IBV_GID_TYPE_ROCE_V2) {
			pick = i;
			break;
		}
		if (pick < 0)
			pick = i;
	}
	if (pick < 0)
		return ENOENT;
	memcpy(gid, e[pick].gid.raw, 16);
	*index = e[pick].gid_index;
	*type = e[pick].gid_type;
	return 0;
}

// ibv_query_device_ex is inline (verbs_context op). Only the ODP capabilities are returned:
// general caps (IBV_ODP_SUPPORT, IBV_ODP_SUPPORT_IMPLICIT) and the RC/UC/UD transport caps.
int pinstorm_odp_caps(struct ibv_context *ctx, uint64_t *general, uint32_t *rc,
		      uint32_t *uc, uint32_t *ud)
{
	struct ibv_device_attr_ex a;
	int rc_;

	memset(&a, 0, sizeof(a));
	rc_ = ibv_query_device_ex(ctx, NULL, &a);
	if (rc_)
		return rc_;
	*general = a.odp_caps.general_caps;
	*rc = a.odp_caps.per_transport_caps.rc_odp_caps;
	*uc = a.odp_caps.per_transport_caps.uc_odp_caps;
	*ud = a.odp_caps.per_transport_caps.ud_odp_caps;
	return 0;
}

// ibv_advise_mr is inline (verbs_context op; EOPNOTSUPP when the provider has none).
// Prefetch `len` bytes at `addr` of an ODP MR for writing, synchronously (FLAG_FLUSH: the
// call returns after the pages are mapped in the device).
int pinstorm_prefetch_mr(struct ibv_pd *pd, uint64_t addr, uint32_t len, uint32_t lkey)
{
	struct ibv_sge sge = { .addr = addr, .length = len, .lkey = lkey };

	return ibv_advise_mr(pd, IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE,
			     IBV_ADVISE_MR_FLAG_FLUSH, &sge, 1);
}

// ibv_post_send is inline (provider data path). One signaled RDMA WRITE (`write` != 0) or
// RDMA READ of `len` bytes between the local buffer (`laddr`, `lkey`) and the remote
// (`raddr`, `rkey`).
// One signaled RDMA WRITE or READ whose local side is a scatter/gather list of `nsge`
// (1 to 4) ranges of one MR, in order.
int pinstorm_post_rdma(struct ibv_qp *qp, int write, uint64_t wr_id, const uint64_t *laddr,
		       const uint32_t *len, int nsge, uint32_t lkey, uint64_t raddr,
		       uint32_t rkey)
{
	struct ibv_sge sge[4];
	struct ibv_send_wr wr, *bad = NULL;
	int i;

	if (nsge < 1 || nsge > 4)
		return EINVAL;
	for (i = 0; i < nsge; i++) {
		sge[i].addr = laddr[i];
		sge[i].length = len[i];
		sge[i].lkey = lkey;
	}
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = wr_id;
	wr.sg_list = sge;
	wr.num_sge = nsge;
	wr.opcode = write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	return ibv_post_send(qp, &wr, &bad);
}

// ibv_poll_cq is inline (provider data path). Polls at most one completion: returns 1 and
// fills the fields, 0 when the queue is empty, a negative value on error.
int pinstorm_poll_one(struct ibv_cq *cq, uint64_t *wr_id, uint32_t *status,
		      uint32_t *opcode, uint32_t *byte_len, uint32_t *vendor_err,
		      uint32_t *qp_num)
{
	struct ibv_wc wc;
	int n;

	memset(&wc, 0, sizeof(wc));
	n = ibv_poll_cq(cq, 1, &wc);
	if (n <= 0)
		return n;
	*wr_id = wc.wr_id;
	*status = wc.status;
	*opcode = wc.opcode;
	*byte_len = wc.byte_len;
	*vendor_err = wc.vendor_err;
	*qp_num = wc.qp_num;
	return 1;
}

// ibv_wc_status_str is exported, but kept here so the Rust side needs no binding for it.
const char *pinstorm_wc_status_str(uint32_t status)
{
	return ibv_wc_status_str((enum ibv_wc_status)status);
}
