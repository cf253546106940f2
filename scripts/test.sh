#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, then format check, lint,
# every test, and one pass of each benchmark as a smoke test (timings are not asserted).
#
# As root it installs Debian packages and the root-only tests run for real (loop devices,
# hugetlbfs, sysctls, SIGINT/SIGKILL cleanup). Without root those tests print why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# mkfs for the loop-device backings; losetup/mount/setpriv (util-linux, mount); a C compiler
# and liburing for the independent probes the tests compare against; chromium to check that
# the HTML report renders (tests/analysis.rs; it must not skip in CI); for the rdma feature
# (--all-features below): libibverbs-dev (headers and the library pinstorm links), cmake,
# make, python3, clang and libnl for ibverbs-sys's vendored rdma-core build and bindgen, and
# ibverbs-providers so a machine with a device (rxe, a NIC) can open it. See docs/rdma.md.
packages=(xfsprogs btrfs-progs e2fsprogs util-linux mount gcc libc6-dev linux-libc-dev liburing-dev chromium
    libibverbs-dev ibverbs-providers cmake make python3 clang pkg-config libnl-3-dev libnl-route-3-dev)

if [ "$(id -u)" = 0 ]; then
    echo "== installing test dependencies: ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    # QEMU, virtme-ng (in a venv in the lab cache) and the guest's tools, for tests/lab.rs.
    PINSTORM_SKIP_APT_UPDATE=1 bash scripts/lab-setup.sh
    # kcidb-io, check-jsonschema and kubernetes-validate (a venv in the lab cache), for
    # tests/nightly.rs: the KCIDB export and the CI examples checked by their own schemas.
    bash scripts/validators-setup.sh
else
    echo "== not root: not installing packages; tests that need root will say they skipped"
    bash scripts/validators-setup.sh || echo "== no validators (python3-venv?): tests/nightly.rs will say it skipped"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== cargo test"
# Bounded: a hang must fail the run quickly, not eat CI's whole budget.
timeout --signal=KILL 1800 cargo test --workspace --all-features --no-fail-fast

echo "== benchmark smoke run (each benchmark once; no timing is checked)"
cargo bench -p pinstorm-workloads --bench pin -- --test
cargo bench -p pinstorm-analysis --bench analysis -- --test

echo "== all tests passed"
