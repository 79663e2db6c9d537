//! Making a session's sandbox: the seam between the node's hands and the
//! sandbox drivers.

use std::path::PathBuf;
use std::sync::Arc;

use agentd_actors::sandbox::OCI_ROOTFS_DEFAULT;
use agentd_actors::sandbox::{ContainerRuntime, Limits, NamespaceSandbox, OciSandbox, Sandbox, SandboxError};
use agentd_protocol::agent::SandboxDriver;
use agentd_protocol::api::SessionInfo;
use futures_util::future::BoxFuture;

use super::MicrovmPool;

/// Makes sandboxes. Production uses [`HostProvisioner`]; the simulator a
/// fake with an effect ledger.
pub trait Provisioner: Send + Sync + 'static {
    /// A sandbox for `session` whose directory on the host is `root`.
    fn provision(
        &self,
        session: &SessionInfo,
        root: PathBuf,
        limits: Limits,
        driver: SandboxDriver,
    ) -> BoxFuture<'_, Result<Arc<dyn Sandbox>, SandboxError>>;
}

/// The real sandbox drivers on this host.
pub struct HostProvisioner {
    /// Where session sandboxes live (the microvm driver keeps its spares here).
    root: PathBuf,
    /// The microvm driver's image and booted spares, prepared at its first use.
    microvm: tokio::sync::OnceCell<Arc<MicrovmPool>>,
}

impl HostProvisioner {
    pub fn new(root: PathBuf) -> Self {
        Self { root, microvm: tokio::sync::OnceCell::new() }
    }

    async fn container(
        runtime: ContainerRuntime,
        root: PathBuf,
        limits: Limits,
    ) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let rootfs = PathBuf::from(OCI_ROOTFS_DEFAULT);
        Ok(Arc::new(OciSandbox::provision_with(runtime, root, limits, rootfs).await?))
    }

    async fn microvm(&self, root: PathBuf, limits: Limits) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let spares = self.root.join(".microvm-spares");
        let pool = self.microvm.get_or_try_init(|| MicrovmPool::from_env(spares)).await?;
        Ok(Arc::new(pool.provision(root, limits).await?))
    }
}

impl Provisioner for HostProvisioner {
    fn provision(
        &self,
        _session: &SessionInfo,
        root: PathBuf,
        limits: Limits,
        driver: SandboxDriver,
    ) -> BoxFuture<'_, Result<Arc<dyn Sandbox>, SandboxError>> {
        Box::pin(async move {
            match driver {
                SandboxDriver::Namespace => Ok(Arc::new(NamespaceSandbox::provision(root, limits).await?) as _),
                SandboxDriver::Oci => Self::container(ContainerRuntime::Runc, root, limits).await,
                SandboxDriver::Gvisor => Self::container(ContainerRuntime::Gvisor, root, limits).await,
                SandboxDriver::Microvm => self.microvm(root, limits).await,
            }
        })
    }
}
