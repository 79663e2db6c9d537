//! The sandbox drivers, one file each: what starts a sandbox's shell and what
//! isolates it. A new driver is a file here that implements `Sandbox` over the
//! shared `CallRunner` (`call/`), plus its line in this module.
//!
//! - `namespace.rs`: bubblewrap namespaces, with the bwrap command line in
//!   `bwrap.rs`;
//! - `oci.rs`: runc or gVisor containers, with the bundle in `oci_bundle.rs`
//!   and the runtimes' command lines in `container_runtime.rs`;
//! - `local.rs`: a plain local shell, for `agentd hands` inside a VM.

mod bwrap;
mod container_runtime;
mod local;
mod namespace;
mod oci;
mod oci_bundle;

pub use bwrap::BWRAP_ENV;
pub(crate) use container_runtime::RuntimeCli;
pub use container_runtime::{ContainerRuntime, GVISOR_STATE_ROOT, RUNC_ENV, RUNSC_ENV};
pub use local::{LocalSandbox, LocalShell};
pub use namespace::NamespaceSandbox;
pub use oci::{OciSandbox, OCI_ROOTFS_DEFAULT};
