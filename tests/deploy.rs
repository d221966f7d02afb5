//! The packaging in deploy/: every Kubernetes manifest validates against the schemas of a pinned
//! Kubernetes version, offline, and agrees with what it packages: the binary's real flags, probe
//! paths and shutdown times, the Dockerfile, and dashboards/ (alert rules, Grafana dashboard).
//!
//! The manifests are rendered by `kubectl kustomize` (or `kustomize build`) and validated by the
//! PyPI package kubernetes-validate (`python3 -m kubernetes_validate`). `./dev test` installs both;
//! without them these tests are skipped, loudly, or fail when CI is set.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Kubernetes version whose schemas every manifest must pass.
const KUBERNETES: &str = "1.30.0";
/// The kustomizations a user applies: the base, and the base with the autopilot controller.
const BASE: &str = "deploy/k8s";
const WITH_AUTOPILOT: &str = "deploy/k8s/overlays/autopilot";
/// Kinds kubernetes-validate has no schema for (Prometheus Operator's CRDs): checked here instead.
const CRDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];
const RULES_CONFIGMAP: &str = "strangler-rules";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A tool is missing: fail under CI, else say so and skip.
fn missing(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is not installed; `./dev test` installs it"
    );
    eprintln!("SKIPPED: {what} is not installed here; run `./dev test` to install it");
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The rendered manifests of a kustomization (a directory under the repository), as text and as
/// documents; `None` when no kustomize is installed.
fn render(dir: &str) -> Option<(String, Vec<Value>)> {
    let mut cmd = if let Some(kubectl) = on_path("kubectl") {
        let mut c = Command::new(kubectl);
        c.arg("kustomize");
        c
    } else if let Some(kustomize) = on_path("kustomize") {
        let mut c = Command::new(kustomize);
        c.arg("build");
        c
    } else {
        missing("kubectl (or kustomize)");
        return None;
    };
    let out = cmd.arg(repo().join(dir)).output().expect("run kustomize");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kustomize {dir}: {stderr}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{dir}: {e}"));
    assert!(!docs.is_empty(), "{dir} renders nothing");
    Some((text, docs))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn name(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn objects(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Every container of a pod template, init containers first.
fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    objects(&pod["initContainers"]).chain(objects(&pod["containers"]))
}

/// The value after `flag` in an argument list, if the flag is there.
fn flag<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).copied())
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// The real binary's parser accepts these arguments: with `--help` after them it parses every
/// flag and value first (an unknown flag or a bad value is an error), then prints help and exits 0.
fn assert_strangler_accepts(args: &[&str], whose: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_strangler"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run strangler");
    assert!(
        out.status.success(),
        "{whose}: strangler refuses {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The arguments of each container that runs strangler: no `command` (the image's entry point,
/// strangler) or a command that is strangler. Other containers (a shell) are left out.
fn strangler_args(pod: &Value) -> Vec<(String, Vec<&str>)> {
    containers(pod)
        // The image is strangler's whatever its registry: `strangler:latest`, `registry/x/strangler:v1`.
        .filter(|c| {
            c["image"]
                .as_str()
                .and_then(|i| i.rsplit('/').next())
                .is_some_and(|n| n.starts_with("strangler"))
        })
        .filter_map(|c| {
            let command = strs(&c["command"]);
            let runs_strangler = command.is_empty() || command[0].ends_with("/strangler") || command[0] == "strangler";
            let mut args: Vec<&str> = command.into_iter().skip(1).collect();
            args.extend(strs(&c["args"]));
            runs_strangler.then(|| (c["name"].as_str().unwrap_or("?").to_string(), args))
        })
        .collect()
}

/// The pod-level and container-level hardening every workload here carries.
fn assert_hardened(doc: &Value) {
    let pod = &doc["spec"]["template"]["spec"];
    let who = name(doc);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{who}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{who}"
    );
    for c in containers(pod) {
        let sc = &c["securityContext"];
        let who = format!("{who} container {}", c["name"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
        assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{who}");
        assert!(
            c["resources"]["requests"]["cpu"].is_string() && c["resources"]["requests"]["memory"].is_string(),
            "{who}: resource requests"
        );
    }
}

/// kubernetes-validate, strict (unknown fields are errors), against the pinned version. Every
/// document must be reported as passed, except the CRDs, which it must report as unknown.
#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let python = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .stderr(Stdio::null())
        .status();
    if !python.is_ok_and(|s| s.success()) {
        return missing("kubernetes-validate (python3 -m pip install kubernetes-validate)");
    }
    for dir in [BASE, WITH_AUTOPILOT] {
        let Some((text, docs)) = render(dir) else { return };
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let out = Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES])
            .arg(file.path())
            .output()
            .expect("run kubernetes-validate");
        let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{dir} does not validate against {KUBERNETES}:\n{report}"
        );
        assert!(!report.contains("ERROR"), "{dir}:\n{report}");
        let minor = KUBERNETES.rsplit_once('.').unwrap().0;
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap();
            let expect = if CRDS.contains(&kind) {
                format!("Couldn't find schema for kind {kind} with api version monitoring.coreos.com/v1")
            } else {
                // Anything else unknown to the schemas (a misspelt kind or apiVersion) is only a
                // warning to kubernetes-validate: passing is required here.
                let n = doc["metadata"]["name"].as_str().unwrap();
                format!(
                    "passed for resource {}/{n} against version {minor}",
                    kind.to_lowercase()
                )
            };
            assert!(
                report.contains(&expect),
                "{dir}: {} not validated:\n{report}",
                name(doc)
            );
        }
    }
}

/// What kubernetes-validate can't check: the Prometheus Operator objects' required fields, that
/// they point at the admin Service, and that they carry dashboards/'s alert rules and dashboard.
#[test]
fn the_monitoring_objects_are_complete_and_carry_dashboards() {
    let Some((_, docs)) = render(BASE) else { return };
    for kind in CRDS {
        let doc = docs
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"));
        assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1", "{kind}");
        assert!(doc["metadata"]["name"].is_string(), "{kind}: metadata.name");
    }

    let monitor = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    assert!(
        selector.as_object().is_some_and(|m| !m.is_empty()),
        "ServiceMonitor: spec.selector"
    );
    let service = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && selector
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &d["metadata"]["labels"][k] == v)
        })
        .expect("ServiceMonitor selects no Service");
    let endpoints: Vec<&Value> = objects(&monitor["spec"]["endpoints"]).collect();
    assert!(!endpoints.is_empty(), "ServiceMonitor: spec.endpoints");
    for e in endpoints {
        assert_eq!(e["path"], "/metrics", "ServiceMonitor endpoint");
        assert!(
            objects(&service["spec"]["ports"]).any(|p| p["name"] == e["port"]),
            "ServiceMonitor scrapes port {} that {} does not have",
            e["port"],
            name(service)
        );
    }
    // The Service the monitor scrapes reaches the admin port of the proxy pods.
    let deployment = find(&docs, "Deployment", "strangler");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "{} selects other pods", name(service));
    }
    assert!(objects(&service["spec"]["ports"]).any(|p| p["targetPort"] == "admin"));

    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let groups = &rule["spec"]["groups"];
    for g in objects(groups) {
        assert!(g["name"].is_string(), "PrometheusRule group without a name");
        for r in objects(&g["rules"]) {
            assert!(r["expr"].is_string(), "PrometheusRule rule without expr: {r}");
            assert!(
                r["alert"].is_string() != r["record"].is_string(),
                "alert or record: {r}"
            );
        }
    }
    let alerts = yaml(&read("dashboards/alerts.yaml"), "dashboards/alerts.yaml");
    assert!(
        groups == &alerts["groups"],
        "the PrometheusRule's groups differ from dashboards/alerts.yaml: run deploy/k8s/sync.sh"
    );

    let dashboard = find(&docs, "ConfigMap", "strangler-grafana-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert!(
        dashboard["data"]["strangler.json"].as_str() == Some(read("dashboards/strangler.json").as_str()),
        "the Grafana dashboard ConfigMap differs from dashboards/strangler.json: run deploy/k8s/sync.sh"
    );
}

/// The copies the base keeps (kustomize reads no file outside it) are the files in dashboards/;
/// checked on the files themselves, so it runs without kustomize too.
#[test]
fn the_copies_of_dashboards_are_current() {
    let rule = yaml(&read("deploy/k8s/base/prometheusrule.yaml"), "prometheusrule.yaml");
    let alerts = yaml(&read("dashboards/alerts.yaml"), "dashboards/alerts.yaml");
    assert!(
        rule["spec"]["groups"] == alerts["groups"],
        "deploy/k8s/base/prometheusrule.yaml differs from dashboards/alerts.yaml: run deploy/k8s/sync.sh"
    );
    assert!(
        read("deploy/k8s/base/grafana/strangler.json") == read("dashboards/strangler.json"),
        "deploy/k8s/base/grafana/strangler.json differs from dashboards/strangler.json: run deploy/k8s/sync.sh"
    );
}

/// The proxy's Deployment: real flags, the rules mounted as a directory, probes on the admin
/// port's paths, a grace period longer than the shutdown it allows for, state on a volume.
#[test]
fn the_proxy_deployment_agrees_with_the_binary() {
    let Some((_, docs)) = render(BASE) else { return };
    let deployment = find(&docs, "Deployment", "strangler");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_hardened(deployment);
    let all = strangler_args(pod);
    for (container, args) in &all {
        assert_strangler_accepts(args, container);
    }
    let (_, args) = all.iter().find(|(c, _)| c == "strangler").expect("container strangler");
    assert_eq!(args.first(), Some(&"run"));
    let proxy = objects(&pod["containers"]).find(|c| c["name"] == "strangler").unwrap();

    // The rules: the ConfigMap mounted as the config file's directory, never with subPath.
    let config = Path::new(flag(args, "--config").expect("--config"));
    let rules_volume = objects(&pod["volumes"])
        .find(|v| v["configMap"]["name"] == RULES_CONFIGMAP)
        .expect("a volume of the rules ConfigMap");
    let mounts: Vec<&Value> = objects(&proxy["volumeMounts"])
        .filter(|m| m["name"] == rules_volume["name"])
        .collect();
    assert_eq!(mounts.len(), 1, "the rules volume is mounted once");
    assert!(
        mounts[0]["subPath"].is_null() && mounts[0]["subPathExpr"].is_null(),
        "the rules ConfigMap is mounted with subPath: kubelet never updates such a mount, so no edit would reach the hot reload"
    );
    assert_eq!(
        Path::new(mounts[0]["mountPath"].as_str().unwrap()),
        config.parent().unwrap()
    );
    let configmap = find(&docs, "ConfigMap", RULES_CONFIGMAP);
    let file = config.file_name().unwrap().to_str().unwrap();
    let rules_text = configmap["data"][file]
        .as_str()
        .expect("the ConfigMap holds the --config file");
    let rules = yaml(rules_text, "the ConfigMap's rules");

    // The rules pass `strangler check` as written (their upstream hosts resolve only in the
    // cluster, which check doesn't need), leave the rollouts to the external controller (the
    // replicas can't write a ConfigMap), and keep state on a writable volume.
    check_as_written(rules_text);
    assert_eq!(rules["autopilot"]["controller"], "external");
    let state_dir = rules["state_dir"].as_str().expect("state_dir in the rules");
    let state_mount = objects(&proxy["volumeMounts"])
        .find(|m| m["mountPath"] == state_dir)
        .unwrap_or_else(|| panic!("nothing is mounted at state_dir {state_dir}"));
    assert_ne!(state_mount["readOnly"], true, "state_dir is mounted read-only");
    let state_volume = objects(&pod["volumes"])
        .find(|v| v["name"] == state_mount["name"])
        .unwrap();
    assert!(state_volume["emptyDir"].is_object() || state_volume["persistentVolumeClaim"].is_object());

    // Probes: the admin port (the --admin flag's, or the rules' admin:), on its real paths.
    let admin = flag(args, "--admin")
        .or(rules["admin"].as_str())
        .expect("an admin address");
    let admin_port = port_of(admin);
    let port_number = |p: &Value| -> u16 {
        match p {
            Value::Number(n) => n.as_u64().unwrap() as u16,
            Value::String(named) => objects(&proxy["ports"])
                .find(|cp| cp["name"] == *named)
                .and_then(|cp| cp["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {named}"))
                as u16,
            _ => panic!("probe port {p}"),
        }
    };
    let mut paths = Vec::new();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &proxy[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            port_number(&get["port"]),
            admin_port,
            "{probe} is not on the admin port"
        );
        paths.push(path);
    }
    assert_admin_answers(&paths);

    // Shutdown: preStop, then the process's grace period and shutdown timeout, all within the
    // kubelet's termination grace period.
    let secs = |f: &str, default: u64| flag(args, f).map_or(default, |v| v.parse().unwrap());
    let grace = secs("--grace-period", strangler::server::DEFAULT_GRACE_SECS);
    let shutdown = secs("--shutdown-timeout", strangler::server::DEFAULT_SHUTDOWN_TIMEOUT_SECS);
    let pre_stop = &proxy["lifecycle"]["preStop"];
    let pre_stop = pre_stop["sleep"]["seconds"]
        .as_u64()
        .or_else(|| {
            let command = strs(&pre_stop["exec"]["command"]);
            assert!(
                command.first().is_some_and(|c| c.ends_with("sleep")),
                "preStop: {pre_stop}"
            );
            command.last()?.parse().ok()
        })
        .expect("a preStop sleep");
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > pre_stop + grace + shutdown,
        "terminationGracePeriodSeconds {termination} <= preStop {pre_stop} + grace {grace} + shutdown {shutdown}"
    );

    // The fleet: several replicas spread over nodes, a budget and an autoscaler that hold them.
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let spreads_nodes = objects(&pod["topologySpreadConstraints"])
        .any(|t| t["topologyKey"] == "kubernetes.io/hostname")
        || pod["affinity"]["podAntiAffinity"].is_object();
    assert!(spreads_nodes, "the replicas are not spread over nodes");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &pod_labels[k] == v))
    };
    let pdb = find(&docs, "PodDisruptionBudget", "strangler");
    assert!(
        selects_pods(&pdb["spec"]["selector"]["matchLabels"]),
        "the budget selects other pods"
    );
    let service = find(&docs, "Service", "strangler");
    assert!(
        selects_pods(&service["spec"]["selector"]),
        "the Service selects other pods"
    );
    let hpa = find(&docs, "HorizontalPodAutoscaler", "strangler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "strangler");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);

    // The image's user is the one the pod runs as (runAsNonRoot needs a numeric USER).
    let user = dockerfile_instruction("USER");
    let uid: u64 = user.split(':').next().unwrap().parse().expect("numeric USER");
    assert_eq!(pod["securityContext"]["runAsUser"], uid);
}

/// The controller component: one controller that runs real flags, and a rules file on one
/// ReadWriteMany volume that the controller and every replica mount as a directory.
#[test]
fn the_autopilot_overlay_shares_one_rules_volume() {
    let Some((_, docs)) = render(WITH_AUTOPILOT) else {
        return;
    };
    let controller = find(&docs, "Deployment", "strangler-autopilot");
    let proxy = find(&docs, "Deployment", "strangler");
    assert_eq!(controller["spec"]["replicas"], 1);
    assert_eq!(
        controller["spec"]["strategy"]["type"], "Recreate",
        "never two controllers at once"
    );
    let pvc = docs
        .iter()
        .find(|d| d["kind"] == "PersistentVolumeClaim")
        .expect("a PersistentVolumeClaim for the rules");
    assert_eq!(strs(&pvc["spec"]["accessModes"]), ["ReadWriteMany"]);
    let claim = &pvc["metadata"]["name"];

    for (deployment, subcommand) in [(controller, "autopilot"), (proxy, "run")] {
        assert_hardened(deployment);
        let pod = &deployment["spec"]["template"]["spec"];
        let all = strangler_args(pod);
        for (container, args) in &all {
            assert_strangler_accepts(args, container);
        }
        let args = &all
            .iter()
            .find(|(_, a)| a.first() == Some(&subcommand))
            .expect(subcommand)
            .1;
        let config = Path::new(flag(args, "--config").expect("--config"));
        let volume = objects(&pod["volumes"])
            .find(|v| &v["persistentVolumeClaim"]["claimName"] == claim)
            .unwrap_or_else(|| panic!("{}: the rules volume is not mounted", name(deployment)));
        assert!(volume["configMap"].is_null(), "{}: {volume}", name(deployment));
        for c in containers(pod) {
            for m in objects(&c["volumeMounts"]).filter(|m| m["name"] == volume["name"]) {
                assert!(
                    m["subPath"].is_null(),
                    "{}: subPath on the rules volume",
                    name(deployment)
                );
                assert_eq!(Path::new(m["mountPath"].as_str().unwrap()), config.parent().unwrap());
            }
        }
    }
    // `strangler autopilot` refuses rules that leave the decisions to the replicas.
    let rules = yaml(
        find(&docs, "ConfigMap", RULES_CONFIGMAP)["data"]["rules.yaml"]
            .as_str()
            .unwrap(),
        "the ConfigMap's rules",
    );
    assert_eq!(rules["autopilot"]["controller"], "external");
}

/// The image runs strangler with real flags, reads the rules where the manifests mount them, and
/// exposes the admin port.
#[test]
fn the_dockerfile_runs_real_flags() {
    let entrypoint: Vec<String> = serde_json::from_str(&dockerfile_instruction("ENTRYPOINT")).expect("exec form");
    assert!(entrypoint == ["/usr/local/bin/strangler"], "{entrypoint:?}");
    let cmd: Vec<String> = serde_json::from_str(&dockerfile_instruction("CMD")).expect("exec form");
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    assert_strangler_accepts(&cmd, "deploy/Dockerfile CMD");
    assert_eq!(flag(&cmd, "--config"), Some("/etc/strangler/rules.yaml"));
    let exposed = dockerfile_instruction("EXPOSE");
    let admin = port_of(flag(&cmd, "--admin").expect("--admin"));
    assert!(
        exposed.split_whitespace().any(|p| p == admin.to_string()),
        "EXPOSE {exposed}"
    );

    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for dir in ["target/", ".git/", ".strangler/", "data/"] {
        assert!(ignored.contains(&dir), ".dockerignore: {dir}");
    }
    for needed in ["vendor", "Cargo.lock", "benches", "src"] {
        assert!(
            !ignored.iter().any(|l| l.trim_end_matches('/') == needed),
            ".dockerignore drops {needed}"
        );
    }
}

/// The last value of a Dockerfile instruction (the runtime stage's).
fn dockerfile_instruction(instruction: &str) -> String {
    read("deploy/Dockerfile")
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(instruction)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("deploy/Dockerfile has no {instruction}"))
        .trim()
        .to_string()
}

/// `strangler check` passes on these rules, as the ConfigMap holds them.
fn check_as_written(rules_text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, rules_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strangler"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's rules fail `strangler check`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status line's code of `GET path`, or `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = String::new();
    s.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A real `strangler run` serves these paths on its admin port (a readiness probe may answer
/// 503: nothing is behind the monolith here; a 404 would mean the path is wrong).
fn assert_admin_answers(paths: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let (listen, admin) = (free_port(), free_port());
    std::fs::write(
        &rules,
        format!("listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nlegacy: monolith\nupstreams:\n  monolith: {{ url: \"http://127.0.0.1:{}\" }}\nroutes: []\n", free_port()),
    )
    .unwrap();
    let _proxy = Killed(
        Command::new(env!("CARGO_BIN_EXE_strangler"))
            .args(["run", "--access-log", "false", "--config"])
            .arg(&rules)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start strangler"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for path in paths {
        let status = loop {
            if let Some(status) = get(admin, path) {
                break status;
            }
            assert!(Instant::now() < deadline, "the admin port never answered");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status == 200 || (*path == "/readyz" && status == 503),
            "GET {path} on the admin port: {status}"
        );
    }
}
