//! Helpers for the end-to-end tests: real `agentd` processes on loopback,
//! each with its own data directory, killed with SIGKILL and restarted.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::agent::{AgentSpec, BuiltInTool, PermissionPolicy};
use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::{ContentBlock, EventPayload};
use agentd_protocol::ids::{AgentId, SessionId};
use anyhow::{bail, Context, Result};

mod mcp_server;
pub use mcp_server::{McpTestServer, MCP_PYTHON_VENV, MCP_PYTHON_VERSION};

/// The node binary the tests run: `agentd-e2e`, this package's copy of the
/// `agentd` program, which cargo rebuilds before running this package's
/// tests (so a test never runs a stale binary). `AGENTD_BIN` overrides it.
/// A macro because cargo tells only integration tests where the binary is.
#[macro_export]
macro_rules! agentd_binary {
    () => {
        std::env::var_os("AGENTD_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_agentd-e2e")))
    };
}

/// A free UDP port on loopback (free when asked; the node binds it soon after).
pub fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    socket.local_addr().expect("local address").port()
}

/// A free TCP port on loopback (free when asked; the node binds it soon after).
pub fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral TCP port");
    listener.local_addr().expect("local address").port()
}

pub struct NodeProcess {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    /// The `--http` address of the Managed Agents HTTP API, if it serves one.
    pub http: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Everything the node has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A cluster of real processes. Dropping it kills every process.
pub struct Cluster {
    binary: PathBuf,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProcess>,
    extra_args: Vec<String>,
}

impl Cluster {
    /// One node with two shards whose scripted models read `scripts` and whose
    /// sandboxes live under `sandboxes`, plus `extra_args` (what the agent-loop
    /// tests run on).
    pub async fn one_node(
        binary: PathBuf,
        scripts: &std::path::Path,
        sandboxes: &std::path::Path,
        extra_args: &[&str],
    ) -> Result<Cluster> {
        let (scripts, sandboxes) = (scripts.display().to_string(), sandboxes.display().to_string());
        let mut args = vec!["--shards", "2", "--scripts-dir", &scripts, "--sandbox-dir", &sandboxes];
        args.extend_from_slice(extra_args);
        Cluster::start(binary, 1, &args).await
    }

    /// Starts `size` nodes: node 1 with `--init`, the others with `--join`,
    /// and waits until every shard has `min(size, replication)` voters.
    pub async fn start(binary: PathBuf, size: usize, extra_args: &[&str]) -> Result<Cluster> {
        Cluster::start_nodes(binary, size, extra_args, false).await
    }

    /// Like [`Cluster::start`], with each node also serving the Managed Agents
    /// HTTP API on a port of its own (`--http 127.0.0.1:PORT`); waits until
    /// every node accepts HTTP connections and returns the nodes' base URLs
    /// (`http://127.0.0.1:PORT`, what the SDKs take as `base_url`), in node order.
    pub async fn start_with_http(binary: PathBuf, size: usize, extra_args: &[&str]) -> Result<(Cluster, Vec<String>)> {
        let cluster = Cluster::start_nodes(binary, size, extra_args, true).await?;
        for node in &cluster.nodes {
            let addr = node.http.as_deref().context("a node without --http")?;
            wait_listening(addr, Duration::from_secs(60))
                .await
                .with_context(|| format!("node {} log tail:\n{}", node.id, node.log_tail()))?;
        }
        let urls = cluster.http_urls();
        Ok((cluster, urls))
    }

    async fn start_nodes(binary: PathBuf, size: usize, extra_args: &[&str], http: bool) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("agentd-e2e-").tempdir()?;
        let mut cluster = Cluster {
            binary,
            dir,
            nodes: Vec::new(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
        };
        for index in 0..size {
            let id = index as u64 + 1;
            let addr = format!("127.0.0.1:{}", free_port());
            let data_dir = cluster.dir.path().join(format!("n{id}"));
            let log = cluster.dir.path().join(format!("n{id}.log"));
            let http = http.then(|| format!("127.0.0.1:{}", free_tcp_port()));
            cluster.nodes.push(NodeProcess { id, addr, data_dir, http, log, child: None });
            let bootstrap = if id == 1 {
                vec!["--init".to_string()]
            } else {
                let token = std::fs::read_to_string(cluster.nodes[0].data_dir.join("join-token"))?;
                vec!["--join".into(), cluster.nodes[0].addr.clone(), "--token".into(), token.trim().to_string()]
            };
            cluster.spawn(id, &bootstrap)?;
            if id == 1 {
                cluster.wait_for(Duration::from_secs(60), "node 1 to initialise", |_| true).await?;
            }
        }
        let expected = size.min(3);
        cluster.wait_replicated(expected, Duration::from_secs(120)).await?;
        cluster.wait_placed(Duration::from_secs(120)).await?;
        Ok(cluster)
    }

    fn node(&self, id: u64) -> &NodeProcess {
        &self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64, bootstrap: &[String]) -> Result<()> {
        self.spawn_with_env(id, bootstrap, &[])
    }

    fn spawn_with_env(&mut self, id: u64, bootstrap: &[String], env: &[(&str, &str)]) -> Result<()> {
        let extra = self.extra_args.clone();
        let binary = self.binary.clone();
        let node = &mut self.nodes[(id - 1) as usize];
        let log = File::options().create(true).append(true).open(&node.log)?;
        let http: Vec<&str> = node.http.as_deref().map(|addr| vec!["--http", addr]).unwrap_or_default();
        let child = Command::new(&binary)
            .arg("start")
            .args(["--node-id", &id.to_string(), "--listen", &node.addr, "--data-dir"])
            .arg(&node.data_dir)
            .args(bootstrap)
            .args(&http)
            .args(&extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// How a node's process ended, once it has (it is then no longer running).
    pub fn try_exit_status(&mut self, id: u64) -> Result<Option<std::process::ExitStatus>> {
        let node = &mut self.nodes[(id - 1) as usize];
        let Some(child) = node.child.as_mut() else { return Ok(None) };
        let status = child.try_wait()?;
        if status.is_some() {
            node.child = None;
        }
        Ok(status)
    }

    /// SIGKILLs a node.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts a new node, with the next node id and an empty data directory,
    /// that joins through the first running node. Answers its id.
    pub fn join_new_node(&mut self) -> Result<u64> {
        self.join_new_node_at(format!("127.0.0.1:{}", free_port()))
    }

    /// As [`Cluster::join_new_node`], listening at `addr` (the address of a
    /// machine that comes back under a new id, say).
    pub fn join_new_node_at(&mut self, addr: String) -> Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        let seed = self.nodes.iter().find(|node| node.is_running()).context("no node is running")?.addr.clone();
        let token = std::fs::read_to_string(self.nodes[0].data_dir.join("join-token"))?;
        let data_dir = self.dir.path().join(format!("n{id}"));
        let log = self.dir.path().join(format!("n{id}.log"));
        let http = self.nodes[0].http.is_some().then(|| format!("127.0.0.1:{}", free_tcp_port()));
        self.nodes.push(NodeProcess { id, addr, data_dir, http, log, child: None });
        self.spawn(id, &["--join".into(), seed, "--token".into(), token.trim().to_string()])?;
        Ok(id)
    }

    /// Restarts a killed node with only its id, address and data directory.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        self.spawn(id, &[])
    }

    /// Restarts a killed node with `env` added to its environment (an
    /// `LD_PRELOAD` that skews its clock, say).
    pub fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) -> Result<()> {
        self.spawn_with_env(id, &[], env)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.addr.clone()).collect()
    }

    /// The base URL of each node's HTTP API (`http://127.0.0.1:PORT`), in node
    /// order; empty unless the cluster was started with [`Cluster::start_with_http`].
    pub fn http_urls(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|node| node.http.as_ref().map(|addr| format!("http://{addr}"))).collect()
    }

    /// The last lines of every node's log, for a failure message.
    pub fn log_tails(&self) -> String {
        let tails: Vec<String> =
            self.nodes.iter().map(|node| format!("--- node {} log tail:\n{}", node.id, node.log_tail())).collect();
        tails.join("\n")
    }

    /// Makes an API key for `workspace` with `agentd apikey create --json`;
    /// returns its id and its secret.
    pub fn create_api_key(&self, workspace: &str) -> Result<(String, String)> {
        let output = self
            .command()?
            .args(["apikey", "create", "--addr", self.running_addr()?, "--workspace", workspace, "--json"])
            .output()?;
        if !output.status.success() {
            bail!("agentd apikey create failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let created: serde_json::Value = serde_json::from_slice(&output.stdout).context("apikey create --json")?;
        let field =
            |name: &str| created[name].as_str().map(str::to_owned).with_context(|| format!("no {name}: {created}"));
        Ok((field("id")?, field("key")?))
    }

    /// Revokes the API key `key_id` with `agentd apikey revoke`.
    pub fn revoke_api_key(&self, key_id: &str) -> Result<()> {
        let output = self.command()?.args(["apikey", "revoke", "--addr", self.running_addr()?, key_id]).output()?;
        if !output.status.success() {
            bail!("agentd apikey revoke failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    fn running_addr(&self) -> Result<&str> {
        Ok(&self.nodes.iter().find(|node| node.is_running()).context("no node is running")?.addr)
    }

    /// The admin API key node 1 wrote at `--init`.
    pub fn admin_key(&self) -> Result<String> {
        let path = self.node(1).data_dir.join("admin-key");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_string())
    }

    /// A client of `addrs` that calls with the admin key.
    pub fn client_of(&self, addrs: Vec<String>) -> Result<Client> {
        Ok(Client::for_addrs(addrs, None)?.with_api_key(self.admin_key()?))
    }

    /// A client that knows every node.
    pub fn client(&self) -> Result<Client> {
        self.client_of(self.addrs())
    }

    /// A client bound to one node (for reading that node's replica).
    pub fn client_for(&self, id: u64) -> Result<Client> {
        self.client_of(vec![self.node(id).addr.clone()])
    }

    /// An `agentd` command of this cluster's program that calls with the
    /// admin key (`AGENTD_API_KEY`).
    pub fn command(&self) -> Result<Command> {
        let mut command = Command::new(&self.binary);
        command.env("AGENTD_API_KEY", self.admin_key()?);
        Ok(command)
    }

    /// Cluster status as seen by the first running node.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let node = self.nodes.iter().find(|node| node.is_running()).context("no node is running")?;
        let client = self
            .client_of(vec![node.addr.clone()])?
            .with_retry(agentd_client::RetryPolicy { deadline: Duration::from_secs(2), ..Default::default() });
        Ok(client.cluster_status().await?)
    }

    /// Waits until `check` holds for the cluster status, or fails with the
    /// last status and the nodes' logs.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.status().await {
                Ok(status) if check(&status) => return Ok(status),
                Ok(status) => last = format!("{status:?}"),
                Err(error) => last = error.to_string(),
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|node| format!("--- node {} log tail:\n{}", node.id, node.log_tail()))
                    .collect();
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last status: {}\n{}",
                    truncate(&last, 4000),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every shard has `voters` voters and a leader, the
    /// metadata group has a leader, and every running node reports in.
    pub async fn wait_replicated(&self, voters: usize, timeout: Duration) -> Result<ClusterStatus> {
        let running = self.nodes.iter().filter(|node| node.is_running()).count();
        self.wait_for(timeout, &format!("every group to have {voters} voters"), |status| {
            status.shards > 0
                && status.nodes.iter().filter(|node| node.reachable).count() >= running
                && leader_views(status).len() == status.shards as usize + 1
                && leader_views(status)
                    .iter()
                    .filter(|group| group.group != agentd_protocol::ids::GroupId::Metadata)
                    .all(|group| group.voters.len() == voters)
        })
        .await
    }

    /// Waits until the replica moves that joins start are done: no shard
    /// has a learner, only its voters host it, and the running nodes hold
    /// within one of an even share of the shards' voters.
    pub async fn wait_placed(&self, timeout: Duration) -> Result<ClusterStatus> {
        let running: Vec<u64> = self.nodes.iter().filter(|node| node.is_running()).map(|node| node.id).collect();
        self.wait_for(timeout, "replicas to be evenly placed", |status| {
            let shards: Vec<_> = leader_views(status)
                .into_iter()
                .filter(|view| view.group != agentd_protocol::ids::GroupId::Metadata)
                .collect();
            let held = |node: &u64| shards.iter().filter(|view| view.voters.contains(node)).count();
            let counts: Vec<usize> = running.iter().map(held).collect();
            let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
            // Moved-off nodes have deleted their copies.
            let hosts = |view: &&agentd_protocol::api::GroupStatus| {
                status.nodes.iter().filter(|node| node.groups.iter().any(|group| group.group == view.group)).count()
            };
            shards.len() == status.shards as usize
                && shards.iter().all(|view| view.learners.is_empty() && hosts(&view) == view.voters.len())
                && spread <= 1
        })
        .await
    }

    /// Waits until every running node's replica of every group has applied
    /// everything its leader has.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<ClusterStatus> {
        let running = self.nodes.iter().filter(|node| node.is_running()).count();
        self.wait_for(timeout, "replicas to converge", |status| {
            if status.nodes.iter().filter(|node| node.reachable).count() < running {
                return false;
            }
            let leaders = leader_views(status);
            leaders.len() == status.shards as usize + 1
                && leaders.iter().all(|leader| {
                    status.nodes.iter().filter(|node| node.reachable).all(|node| {
                        node.groups
                            .iter()
                            .filter(|group| group.group == leader.group)
                            .all(|group| group.last_applied_index >= leader.last_log_index)
                    })
                })
        })
        .await
    }
}

impl Cluster {
    /// Waits until every group has one leader and the running nodes lead
    /// within one of even (the leader balancer has settled).
    pub async fn wait_balanced(&self, timeout: Duration) -> Result<ClusterStatus> {
        let running = self.nodes.iter().filter(|node| node.is_running()).count();
        self.wait_for(timeout, "leaders to spread evenly", |status| {
            let leads = leaders_per_node(status);
            let (max, min) = (leads.values().max().copied(), leads.values().min().copied());
            leads.len() == running
                && leads.values().sum::<usize>() == status.shards as usize + 1
                && max.zip(min).is_some_and(|(max, min)| max - min <= 1)
        })
        .await
    }
}

/// Each group's status as reported by its leader (groups without a leader are absent).
pub fn leader_views(status: &ClusterStatus) -> Vec<agentd_protocol::api::GroupStatus> {
    let mut views = std::collections::BTreeMap::new();
    for node in &status.nodes {
        for group in &node.groups {
            if group.leader == Some(node.node_id) {
                views.insert(group.group, group.clone());
            }
        }
    }
    views.into_values().collect()
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_listening(addr: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() > deadline => bail!("nothing listens on {addr} after {timeout:?}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Processes whose command line mentions `text` and, if `name_prefix` is
/// given, whose name starts with it (how tests find a sandbox's or a VM's
/// processes on this host).
pub fn processes_mentioning(text: &str, name_prefix: Option<&str>) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(text))
                && name_prefix.is_none_or(|prefix| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.starts_with(prefix))
                })
        })
        .collect()
}

/// Appends to one session continuously from a task, through whatever fault
/// a test injects, recording the sequence number of every acknowledged append.
pub struct Appender {
    acknowledged: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    /// The longest time between two acknowledgements (or from the start to
    /// the first): the longest window in which this client could not append.
    longest_gap: std::sync::Arc<std::sync::Mutex<Duration>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Appender {
    /// Starts appending with `client` (which should know every node, so that
    /// it can move away from a node that refuses), one append every 5 ms.
    /// The first failed append (after the client's own retries) stops it.
    pub fn start(client: Client, session: SessionId) -> Appender {
        let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let longest_gap = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let task = {
            let (acknowledged, stop, longest_gap) = (acknowledged.clone(), stop.clone(), longest_gap.clone());
            tokio::spawn(async move {
                let mut index = 0u64;
                let mut last_ack = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = format!("appended {index}");
                    let seq =
                        client.append(session, EventPayload::user_text(text)).await.context("an append failed")?;
                    agentd_protocol::sync::lock(&acknowledged).push(seq);
                    {
                        let mut longest = agentd_protocol::sync::lock(&longest_gap);
                        *longest = (*longest).max(last_ack.elapsed());
                    }
                    last_ack = Instant::now();
                    index += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(())
            })
        };
        Appender { acknowledged, longest_gap, stop, task }
    }

    /// The longest window so far in which no append was acknowledged.
    pub fn longest_gap(&self) -> Duration {
        *agentd_protocol::sync::lock(&self.longest_gap)
    }

    /// How many appends were acknowledged so far.
    pub fn count(&self) -> usize {
        agentd_protocol::sync::lock(&self.acknowledged).len()
    }

    /// Stops, and answers the acknowledged sequence numbers in order (or the
    /// failure that stopped the appends).
    pub async fn stop(self) -> Result<Vec<u64>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.context("the appender panicked")??;
        Ok(agentd_protocol::sync::lock(&self.acknowledged).clone())
    }
}

/// Checks that every running node's replica of `session` holds the same
/// events as the leader's, numbered 1, 2, 3... with no gap or repeat, and
/// that each of the `acknowledged` sequence numbers is among them.
pub async fn assert_every_replica_holds(cluster: &Cluster, session: SessionId, acknowledged: &[u64]) -> Result<()> {
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let leader_view = cluster.client()?.read_all(session, Consistency::Leader).await?;
    for node in cluster.nodes.iter().filter(|node| node.is_running()) {
        let events = cluster.client_for(node.id)?.read_all(session, Consistency::Local).await?;
        let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            bail!("node {}: the sequence numbers are not 1..{}: {seqs:?}", node.id, seqs.len());
        }
        if events != leader_view {
            bail!("node {}'s replica of {session} differs from the leader's", node.id);
        }
        if let Some(missing) = acknowledged.iter().find(|seq| seqs.binary_search(seq).is_err()) {
            bail!("node {} lacks acknowledged event {missing} of {session}", node.id);
        }
    }
    Ok(())
}

/// The text of each tool result of `session`, once it has at least `results`
/// of them and is idle; panics after 60 s with the events it saw.
pub async fn tool_results(client: &Client, session: SessionId, results: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = client.read_all(session, Consistency::Leader).await.expect("read events");
        let outputs: Vec<String> = events
            .iter()
            .filter_map(|event| match &event.payload {
                EventPayload::AgentToolResult { content, .. } => {
                    Some(content.iter().map(|ContentBlock::Text { text }| text.as_str()).collect())
                }
                _ => None,
            })
            .collect();
        let idle = matches!(events.last().map(|event| &event.payload), Some(EventPayload::SessionStatusIdle { .. }));
        if outputs.len() >= results && idle {
            return outputs;
        }
        assert!(Instant::now() < deadline, "no {results} tool results in time: {events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent of `model` with no tools and two model calls a turn.
pub fn plain_agent(name: &str, model: &str) -> AgentSpec {
    AgentSpec {
        name: name.to_owned(),
        model: model.to_owned(),
        system: None,
        tools: Vec::new(),
        custom_tools: Vec::new(),
        max_model_calls_per_turn: 2,
        mcp_servers: vec![],
        mcp_toolsets: vec![],
    }
}

/// Writes `turns` (the `scripted:FILE` format: an array of turns, each an
/// array of content blocks) to `scripts/NAME.json` and creates an agent that
/// plays it, with `bash` always allowed. The cluster must run with
/// `--scripts-dir scripts`.
pub async fn scripted_bash_agent(
    client: &Client,
    scripts: &std::path::Path,
    name: &str,
    turns: serde_json::Value,
) -> Result<AgentId> {
    std::fs::write(scripts.join(format!("{name}.json")), turns.to_string())?;
    let spec = AgentSpec {
        name: name.to_owned(),
        model: format!("scripted:{name}.json"),
        system: None,
        tools: vec![BuiltInTool { name: "bash".into(), policy: PermissionPolicy::AlwaysAllow }],
        custom_tools: Vec::new(),
        max_model_calls_per_turn: 10,
        mcp_servers: vec![],
        mcp_toolsets: vec![],
    };
    Ok(client.put_agent(None, spec).await?.id)
}

/// Where `scripts/setup.sh` installs the official Python SDK (`anthropic`, in a venv).
pub const SDK_PYTHON_VENV: &str = "/var/cache/agentd/python";
/// Where `scripts/setup.sh` installs the official TypeScript SDK (`@anthropic-ai/sdk`).
pub const SDK_NODE_PREFIX: &str = "/var/cache/agentd/node";
/// The SDK versions the compatibility tests pin.
pub const SDK_PYTHON_VERSION: &str = "2.10.0";
pub const SDK_NODE_VERSION: &str = "1.16.0";

/// `tests/sdk`: the scripts that drive the official SDKs, and their model scripts.
pub fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// A command that runs a script of `tests/sdk` with the cached Python SDK's
/// interpreter (in `tests/sdk`, with no `ANTHROPIC_*` variable). Fails,
/// saying to run scripts/setup.sh, when that SDK is not installed.
pub fn sdk_python() -> Result<Command> {
    let python = PathBuf::from(SDK_PYTHON_VENV).join("bin/python");
    let probe = format!("import anthropic, sys; sys.exit(anthropic.__version__ != '{SDK_PYTHON_VERSION}')");
    let installed = Command::new(&python).args(["-c", &probe]).output().is_ok_and(|output| output.status.success());
    if !installed {
        bail!(
            "the official Python SDK (anthropic=={SDK_PYTHON_VERSION}) is not installed in {SDK_PYTHON_VENV}: \
             run scripts/setup.sh"
        );
    }
    let mut command = Command::new(python);
    // No __pycache__ left in the source tree.
    command.current_dir(sdk_dir()).env("PYTHONDONTWRITEBYTECODE", "1");
    without_sdk_variables(&mut command);
    Ok(command)
}

/// A command that runs a script of `tests/sdk` with `node`, resolving
/// `@anthropic-ai/sdk` from the cached install. Fails, saying to run
/// scripts/setup.sh, when that SDK is not installed.
pub fn sdk_node() -> Result<Command> {
    let modules = PathBuf::from(SDK_NODE_PREFIX).join("node_modules");
    let manifest = modules.join("@anthropic-ai/sdk/package.json");
    let version = std::fs::read(&manifest)
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .and_then(|package| package["version"].as_str().map(str::to_owned));
    if version.as_deref() != Some(SDK_NODE_VERSION) {
        bail!(
            "the official TypeScript SDK (@anthropic-ai/sdk@{SDK_NODE_VERSION}) is not installed in \
             {SDK_NODE_PREFIX} (found {version:?}): run scripts/setup.sh"
        );
    }
    let mut command = Command::new("node");
    command.current_dir(sdk_dir()).env("AGENTD_SDK_NODE_DIR", SDK_NODE_PREFIX).env("NODE_PATH", modules);
    without_sdk_variables(&mut command);
    Ok(command)
}

fn without_sdk_variables(command: &mut Command) {
    for variable in ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "AGENTD_API_KEY"] {
        command.env_remove(variable);
    }
}

/// Runs an SDK script to its end; returns its standard output, or fails with
/// its output and the cluster's logs when it exits non-zero.
pub fn run_sdk_script(command: &mut Command, cluster: &Cluster) -> Result<String> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n--- stdout:\n{stdout}\n--- stderr:\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            cluster.log_tails()
        );
    }
    Ok(stdout)
}

/// Runs an SDK script that asks the test to act: each line it prints goes to
/// `act`, whose answer (if any) is written back as a line on the script's
/// stdin (e.g. `KILL` → SIGKILL a node → `killed`). Returns the script's
/// stdout, or fails with its output and the cluster's logs when it exits
/// non-zero.
pub fn run_sdk_script_with(
    command: &mut Command,
    cluster: &mut Cluster,
    mut act: impl FnMut(&str, &mut Cluster) -> Result<Option<String>>,
) -> Result<String> {
    use std::io::{BufRead, Write};
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stderr_path = cluster.dir.path().join(format!("sdk-script-{run}.stderr"));
    let mut script = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let stdout = script.stdout.take().context("the script's stdout")?;
    let mut stdin = script.stdin.take().context("the script's stdin")?;
    let mut printed = String::new();
    let mut acted = Ok(());
    for line in std::io::BufReader::new(stdout).lines() {
        let step = line.map_err(anyhow::Error::from).and_then(|line| {
            printed.push_str(&line);
            printed.push('\n');
            if let Some(answer) = act(line.trim(), cluster)? {
                writeln!(stdin, "{answer}")?;
                stdin.flush()?;
            }
            Ok(())
        });
        if step.is_err() {
            acted = step;
            break;
        }
    }
    drop(stdin);
    if acted.is_err() {
        let _ = script.kill();
    }
    let status = script.wait()?;
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let context = format!("--- stdout:\n{printed}\n--- stderr:\n{stderr}\n{}", cluster.log_tails());
    acted.with_context(|| context.clone())?;
    if !status.success() {
        bail!("{command:?} failed ({status}):\n{context}");
    }
    Ok(printed + &stderr)
}

/// How many groups each reachable node leads, by its own report (a group
/// that two nodes both claim is counted for both).
pub fn leaders_per_node(status: &ClusterStatus) -> std::collections::BTreeMap<u64, usize> {
    status
        .nodes
        .iter()
        .filter(|node| node.reachable)
        .map(|node| (node.node_id, node.groups.iter().filter(|group| group.leader == Some(node.node_id)).count()))
        .collect()
}
