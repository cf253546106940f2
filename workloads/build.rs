//! With the `rdma` feature: compile the small C shim for the verbs rdma-core only has as
//! `static inline` functions (see src/pin/rdma/shim.c and docs/rdma.md). Needs
//! <infiniband/verbs.h> (Debian: libibverbs-dev). Without the feature: nothing.

fn main() {
    #[cfg(feature = "rdma")]
    {
        println!("cargo:rerun-if-changed=src/pin/rdma/shim.c");
        if !std::path::Path::new("/usr/include/infiniband/verbs.h").exists()
            && std::env::var_os("PINSTORM_VERBS_INCLUDE").is_none()
        {
            println!(
                "cargo:warning=<infiniband/verbs.h> not found: install libibverbs-dev (or set PINSTORM_VERBS_INCLUDE)"
            );
        }
        let mut b = cc::Build::new();
        b.file("src/pin/rdma/shim.c").warnings(true);
        if let Some(inc) = std::env::var_os("PINSTORM_VERBS_INCLUDE") {
            b.include(inc);
        }
        println!("cargo:rerun-if-env-changed=PINSTORM_VERBS_INCLUDE");
        b.compile("pinstorm_verbs_shim");
        // The shim calls into libibverbs (ibv_query_gid_table, ibv_wc_status_str); ibverbs-sys
        // links it too, but say so for the shim's own sake.
        println!("cargo:rustc-link-lib=ibverbs");
    }
}
