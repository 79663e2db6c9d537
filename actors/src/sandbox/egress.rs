//! Egress to an allowlist of hosts: a network namespace with only loopback, and
//! an HTTP proxy listening inside it that opens the allowed connections from
//! outside.
//!
//! A sandbox whose environment allows a list of hosts runs in a network
//! namespace of its own whose only interface is loopback: no route leaves it,
//! so no packet reaches the host or the internet directly. The one way out is
//! the proxy at `127.0.0.1:3128` inside that namespace. Its listening socket
//! was created inside the namespace (by a thread that entered it), but it is
//! served by the node, in the host's namespace, where the connections it opens
//! go. Tools find it through the usual variables (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY` and their lowercase forms), which curl, wget, git, pip, npm and
//! most HTTP libraries honour. A program that ignores them simply has no
//! network.
//!
//! The proxy speaks HTTP/1.1 proxying: `CONNECT host:port` opens a tunnel
//! (HTTPS, or any TCP protocol a client can tunnel), and a request with an
//! absolute `http://` URL is forwarded with its request line in origin form.
//! For each connection:
//! - the host and port must match the allowlist (`protocol::egress`), else the
//!   answer is `403` with the reason;
//! - a name is resolved by the proxy (the sandbox has no DNS), and addresses
//!   that are loopback, link-local (cloud metadata services live there),
//!   unspecified or multicast are skipped unless the allowlist names that
//!   address literally: an allowed name cannot be pointed at the host itself;
//! - failures to resolve or connect are `502`.
//!
//! The proxy serves at most [`CONNECTIONS_MAX`] connections of one sandbox at
//! a time, and every connection ends when the sandbox is destroyed.
//!
//! Every driver can run in such a namespace, bound at `root/netns`: bwrap is
//! started in it through `nsenter`; runc joins it through the bundle, and
//! runsc too (with `--network=host`, so gVisor's sockets are the namespace's).
//! Needs root, util-linux's `unshare` and `nsenter`, and iproute2's `ip`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentd_protocol::egress::Allowlist;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Limits, Network, SandboxError};

/// Where the proxy listens inside the sandbox's network namespace.
pub const PROXY_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3128);
/// The proxy as tools' environment variables name it.
pub const PROXY_URL: &str = "http://127.0.0.1:3128";

/// Connections of one sandbox the proxy serves at once; more are answered `503`.
pub const CONNECTIONS_MAX: usize = 64;
/// A request head longer than this is refused.
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT_MS: u64 = 10_000;
/// How long resolving a name, and then connecting, may take.
const UPSTREAM_TIMEOUT_MS: u64 = 10_000;
/// How long creating the namespace may take.
const NAMESPACE_TIMEOUT_MS: u64 = 5_000;

/// The environment variables that point tools at the proxy.
pub fn proxy_environment() -> Vec<(&'static str, &'static str)> {
    let mut variables: Vec<(&'static str, &'static str)> =
        ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
            .into_iter()
            .map(|name| (name, PROXY_URL))
            .collect();
    variables.extend([("NO_PROXY", "localhost,127.0.0.1,::1"), ("no_proxy", "localhost,127.0.0.1,::1")]);
    variables
}

/// A sandbox's own network namespace, bound at a path so that runtimes can
/// join it, with the egress proxy listening inside. Dropping it stops the
/// proxy (and every connection through it) and unmounts the namespace; the
/// kernel frees it when the sandbox's last process leaves.
#[derive(Debug)]
pub(crate) struct EgressNetwork {
    namespace: PathBuf,
    proxy: tokio::task::JoinHandle<()>,
}

impl EgressNetwork {
    /// The sandbox's own namespace and proxy if `limits` allow a list of hosts; `None` otherwise.
    pub(crate) async fn for_limits(root: &Path, limits: &Limits) -> Result<Option<EgressNetwork>, SandboxError> {
        match &limits.network {
            Network::Allowlist(entries) => {
                let label = root.file_name().map_or_else(String::new, |name| name.to_string_lossy().into_owned());
                Ok(Some(EgressNetwork::create(root, entries, label).await?))
            }
            Network::None | Network::Unrestricted => Ok(None),
        }
    }

    /// Creates the namespace bound at `root/netns` (replacing one a crashed
    /// node left there) and starts the proxy for `entries`. Needs root.
    pub(crate) async fn create(root: &Path, entries: &[String], label: String) -> Result<EgressNetwork, SandboxError> {
        let allowlist = Allowlist::parse(entries)
            .map_err(|reason| SandboxError::Unavailable(format!("the environment's allowlist is invalid: {reason}")))?;
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::Unavailable(
                "an egress allowlist needs agentd to run as root (it creates a network namespace per sandbox)"
                    .to_owned(),
            ));
        }
        let namespace = root.join("netns");
        release_namespace(&namespace);
        std::fs::File::create(&namespace)
            .map_err(|error| SandboxError::Io(format!("creating {}: {error}", namespace.display())))?;
        bind_namespace(&namespace).await?;
        let listener = listen_in_namespace(namespace.clone(), PROXY_ADDRESS).await.map_err(|error| {
            release_namespace(&namespace);
            SandboxError::Unavailable(format!("listening in the sandbox's network namespace: {error}"))
        })?;
        let proxy = tokio::spawn(serve(listener, Arc::new(allowlist), label));
        Ok(EgressNetwork { namespace, proxy })
    }

    /// Where the namespace is bound: `nsenter --net=PATH`, or an OCI bundle's network namespace path.
    pub(crate) fn namespace(&self) -> &Path {
        &self.namespace
    }

    /// Stops the proxy, which ends every connection through it, and unmounts the
    /// namespace. Idempotent; dropping does it too.
    pub(crate) fn close(&self) {
        self.proxy.abort();
        release_namespace(&self.namespace);
    }
}

impl Drop for EgressNetwork {
    fn drop(&mut self) {
        self.close();
    }
}

/// `unshare --net=PATH` makes a namespace and binds it at `path`; `ip` brings its loopback up.
async fn bind_namespace(path: &Path) -> Result<(), SandboxError> {
    let mut command = tokio::process::Command::new("unshare");
    command.arg(format!("--net={}", path.display())).args(["ip", "link", "set", "lo", "up"]).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_millis(NAMESPACE_TIMEOUT_MS), command.output()).await;
    let failure = match output {
        Ok(Ok(output)) if output.status.success() => return Ok(()),
        Ok(Ok(output)) => format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()),
        Ok(Err(error)) => error.to_string(),
        Err(_elapsed) => format!("no answer within {NAMESPACE_TIMEOUT_MS} ms"),
    };
    release_namespace(path);
    Err(SandboxError::Unavailable(format!(
        "creating the sandbox's network namespace with `unshare --net={} ip link set lo up` failed ({failure}); \
         it needs util-linux's unshare and iproute2's ip (apt-get install util-linux iproute2)",
        path.display()
    )))
}

/// Removes a session's sandbox directory `root` for good. A node that crashed
/// may have left the sandbox's egress namespace bound at `root/netns`, which
/// would make the removal fail: it is unmounted first.
pub fn remove_session_directory(root: &Path) -> std::io::Result<()> {
    release_namespace(&root.join("netns"));
    std::fs::remove_dir_all(root)
}

/// Unmounts and removes a namespace bound at `path`, if any.
fn release_namespace(path: &Path) {
    let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_file(path);
}

/// Binds a TCP listener at `address` inside the network namespace bound at
/// (or linked from) `namespace`, and returns it to be served from this one.
/// A socket stays in the namespace it was created in; only a thread that
/// enters the namespace can create it there, so a dedicated thread does, then
/// ends (it must not go back to serving anything else).
pub async fn listen_in_namespace(namespace: PathBuf, address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("agentd-netns-listen".to_owned()).spawn(move || {
        let bound = (|| -> std::io::Result<std::net::TcpListener> {
            let file = std::fs::File::open(&namespace)?;
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
            let listener = std::net::TcpListener::bind(address)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })();
        let _ = sender.send(bound);
    })?;
    let listener =
        receiver.await.map_err(|_| std::io::Error::other("the namespace thread ended without an answer"))??;
    tokio::net::TcpListener::from_std(listener)
}

/// Serves the proxy on `listener` until aborted; aborting ends every connection.
pub async fn serve(listener: tokio::net::TcpListener, allowlist: Arc<Allowlist>, label: String) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let (mut client, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(sandbox = %label, %error, "the egress proxy could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= CONNECTIONS_MAX {
            let reason = format!("the sandbox has {CONNECTIONS_MAX} proxied connections open already");
            connections.spawn(async move { refuse(&mut client, 503, "Service Unavailable", &reason).await });
            continue;
        }
        let (allowlist, label) = (Arc::clone(&allowlist), label.clone());
        connections.spawn(async move { proxy_connection(client, &allowlist, &label).await });
    }
}

/// What a client asked the proxy for.
#[derive(Debug, PartialEq, Eq)]
struct ProxyRequest {
    host: String,
    port: u16,
    /// `None` for `CONNECT`; else the head to send upstream (origin-form request line, no `Proxy-*` headers).
    forward_head: Option<Vec<u8>>,
}

async fn proxy_connection(mut client: TcpStream, allowlist: &Allowlist, label: &str) {
    let (head, leftover) = match read_head(&mut client).await {
        Ok(read) => read,
        Err(reason) => return refuse(&mut client, 400, "Bad Request", &reason).await,
    };
    let request = match parse_request(&head) {
        Ok(request) => request,
        Err(reason) => return refuse(&mut client, 400, "Bad Request", &reason).await,
    };
    let (host, port) = (request.host.as_str(), request.port);
    let mut upstream = match open_upstream(allowlist, host, port).await {
        Ok(upstream) => upstream,
        Err((status, reason)) => {
            let decision = if status == 403 { "denied" } else { "failed" };
            metrics::counter!("agentd_sandbox_egress_connections_total", "decision" => decision).increment(1);
            tracing::info!(sandbox = %label, host, port, status, %reason, "egress refused");
            let phrase = if status == 403 { "Forbidden" } else { "Bad Gateway" };
            return refuse(&mut client, status, phrase, &reason).await;
        }
    };
    metrics::counter!("agentd_sandbox_egress_connections_total", "decision" => "allowed").increment(1);
    tracing::info!(sandbox = %label, host, port, "egress allowed");
    let started = match &request.forward_head {
        None => client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await,
        Some(forward_head) => upstream.write_all(forward_head).await,
    };
    if started.is_err() || upstream.write_all(&leftover).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Checks `host:port` against the allowlist, resolves it and connects.
/// Errors are an HTTP status and the reason.
async fn open_upstream(allowlist: &Allowlist, host: &str, port: u16) -> Result<TcpStream, (u16, String)> {
    if !allowlist.allows(host, port) {
        return Err((403, format!("agentd: egress to {host}:{port} is not in this environment's allowlist")));
    }
    let literal = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(host);
    let timeout = Duration::from_millis(UPSTREAM_TIMEOUT_MS);
    let resolved: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(address) => vec![SocketAddr::new(address, port)],
        Err(_) => match tokio::time::timeout(timeout, tokio::net::lookup_host((literal, port))).await {
            Ok(Ok(addresses)) => addresses.collect(),
            Ok(Err(error)) => return Err((502, format!("agentd: cannot resolve {host}: {error}"))),
            Err(_elapsed) => return Err((502, format!("agentd: resolving {host} took over {UPSTREAM_TIMEOUT_MS} ms"))),
        },
    };
    let reachable: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|address| allowlist.lists_address(address.ip()) || !is_host_internal(address.ip()))
        .collect();
    if reachable.is_empty() {
        return Err((
            403,
            format!(
                "agentd: {host} resolves only to loopback, link-local or other internal addresses ({resolved:?}); \
                 list the address itself to allow it"
            ),
        ));
    }
    let mut last_error = String::new();
    for address in reachable {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last_error = format!("{address}: {error}"),
            Err(_elapsed) => last_error = format!("{address}: no answer within {UPSTREAM_TIMEOUT_MS} ms"),
        }
    }
    Err((502, format!("agentd: cannot connect to {host}:{port} ({last_error})")))
}

/// Addresses a name must not lead to: the host itself and its link-local
/// neighbours (including cloud metadata services).
fn is_host_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_host_internal(IpAddr::V4(v4)),
            None => {
                v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()
                // Unique local addresses (fc00::/7) are private, like 10/8: allowed when named.
            }
        },
    }
}

/// Reads up to the end of the request head; returns it and whatever followed it.
async fn read_head(client: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buffer = Vec::with_capacity(1024);
    let read = async {
        loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                let leftover = buffer.split_off(end + 4);
                return Ok((std::mem::take(&mut buffer), leftover));
            }
            if buffer.len() > HEAD_BYTES_MAX {
                return Err(format!("agentd: the request head is over {HEAD_BYTES_MAX} bytes"));
            }
            let mut chunk = [0u8; 4096];
            match client.read(&mut chunk).await {
                Ok(0) => return Err("agentd: the connection closed before the request head ended".to_owned()),
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                Err(error) => return Err(format!("agentd: reading the request: {error}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(HEAD_TIMEOUT_MS), read)
        .await
        .unwrap_or_else(|_| Err(format!("agentd: no request head within {HEAD_TIMEOUT_MS} ms")))
}

/// Parses a proxy request head: `CONNECT host:port` or an absolute `http://` URL.
fn parse_request(head: &[u8]) -> Result<ProxyRequest, String> {
    let text = std::str::from_utf8(head).map_err(|_| "agentd: the request head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("agentd: malformed request line {request_line:?}"));
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, None)?;
        return Ok(ProxyRequest { host, port, forward_head: None });
    }
    let Some(rest) = target.get(..7).filter(|scheme| scheme.eq_ignore_ascii_case("http://")).map(|_| &target[7..])
    else {
        return Err(format!(
            "agentd: {target:?} is not an absolute http:// URL; this is an HTTP proxy (use CONNECT for https)"
        ));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
    let (host, port) = split_authority(authority, Some(80))?;
    let mut forward = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|line| !line.is_empty()) {
        if !line.get(..6).is_some_and(|prefix| prefix.eq_ignore_ascii_case("proxy-")) {
            forward.push_str(line);
            forward.push_str("\r\n");
        }
    }
    forward.push_str("\r\n");
    Ok(ProxyRequest { host, port, forward_head: Some(forward.into_bytes()) })
}

/// Splits `host:port` (or `[v6]:port`); `default_port` is used when there is none.
fn split_authority(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => (host, Some(port)),
        _ => (authority, None),
    };
    let port = match (port, default_port) {
        (Some(text), _) => text.parse::<u16>().ok().filter(|port| *port > 0),
        (None, default) => default,
    };
    match port {
        Some(port) if !host.is_empty() => Ok((host.to_owned(), port)),
        _ => Err(format!("agentd: {authority:?} is not host:port")),
    }
}

async fn refuse(client: &mut TcpStream, status: u16, phrase: &str, reason: &str) {
    let body = format!("{reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\nX-Agentd-Egress: refused\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_requests_name_host_and_port() {
        let request = parse_request(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(request, ProxyRequest { host: "api.example.com".into(), port: 443, forward_head: None });
        let v6 = parse_request(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", 8443));
        assert!(parse_request(b"CONNECT api.example.com HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn absolute_urls_are_forwarded_in_origin_form_without_proxy_headers() {
        let head = b"GET http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n";
        let request = parse_request(head).unwrap();
        assert_eq!((request.host.as_str(), request.port), ("Example.com", 8080));
        assert_eq!(
            String::from_utf8(request.forward_head.unwrap()).unwrap(),
            "GET /a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n"
        );
        let bare = parse_request(b"GET http://example.com HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(bare.port, 80);
        assert!(String::from_utf8(bare.forward_head.unwrap()).unwrap().starts_with("GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn requests_that_are_not_proxy_requests_are_refused() {
        for head in [
            &b"GET /index.html HTTP/1.1\r\n\r\n"[..],
            b"GET https://example.com/ HTTP/1.1\r\n\r\n",
            b"nonsense\r\n\r\n",
        ] {
            assert!(parse_request(head).is_err(), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in ["127.0.0.1", "127.8.9.10", "169.254.169.254", "0.0.0.0", "::1", "fe80::1", "::ffff:127.0.0.1"]
        {
            assert!(is_host_internal(internal.parse().unwrap()), "{internal}");
        }
        for external in ["93.184.216.34", "10.0.0.7", "2001:db8::1", "fd00::1"] {
            assert!(!is_host_internal(external.parse().unwrap()), "{external}");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused_unless_the_address_is_listed() {
        let allowlist = Allowlist::parse(&["localhost:9"]).unwrap();
        let Err((status, reason)) = open_upstream(&allowlist, "localhost", 9).await else {
            panic!("a name leading to loopback was opened");
        };
        assert_eq!(status, 403, "{reason}");
        assert!(reason.contains("loopback"), "{reason}");
        let Err((status, _)) = open_upstream(&allowlist, "localhost", 10).await else { panic!("port 10 opened") };
        assert_eq!(status, 403);
    }
}
