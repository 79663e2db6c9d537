//! Real runc containers: tools, idempotency, confinement and limits (the tests are in
//! `container_sandbox/`, shared with the gVisor driver). Needs `runc` and a busybox
//! rootfs (scripts/setup.sh installs both and builds the rootfs with
//! scripts/oci-rootfs.sh); each test is skipped, with the reason on stderr, only when
//! the probe says runc is unavailable here.

#![allow(clippy::disallowed_methods, reason = "tests of real sandboxes on the host, timed by the wall clock")]

#[macro_use]
mod container_sandbox;
mod sandbox_calls;

container_sandbox_tests!(agentd_actors::sandbox::ContainerRuntime::Runc);
