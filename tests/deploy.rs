//! Deploy files: the Kubernetes base and its StatefulSet variant (generated
//! parts equal to their sources, offline schema validation, the pod spec run
//! for real), the systemd unit, and the container recipe's build context.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{repo_path, run_ok, temp_dir, Exporter, Nats, EXPORTER};
use serde_json::Value;

const BASE: &str = "deploy/kubernetes/base";
const STATEFULSET: &str = "deploy/kubernetes/statefulset";
const ELASTIC: &str = "deploy/kubernetes/elastic";

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (exit success, stdout + stderr)
fn run(program: &str, args: &[&str], env: &[(&str, PathBuf)]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run scripts/setup)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn generated_files_are_up_to_date() {
    run_ok(
        repo_path("scripts/gen-deploy").to_str().unwrap(),
        &["--check"],
    );
}

#[test]
fn prometheus_rule_carries_the_rules_file() {
    let rule = yaml(&repo_path(&format!("{BASE}/generated/prometheusrule.yaml")));
    assert_eq!(rule["kind"], "PrometheusRule");
    let rules = yaml(&repo_path("rules/session-exporter.rules.yml"));
    assert_eq!(rule["spec"]["groups"], rules["groups"]);
    assert!(rule["spec"]["groups"].as_array().unwrap().len() >= 2);
    // The spec itself is a rules file promtool accepts (JSON is YAML).
    let file = temp_dir("prometheusrule").join("spec.rules.json");
    std::fs::write(&file, serde_json::to_string(&rule["spec"]).unwrap()).unwrap();
    for bin in common::prometheus_versions() {
        run_ok(
            bin.promtool.to_str().unwrap(),
            &["check", "rules", file.to_str().unwrap()],
        );
    }
}

/// `key` of each item of a list.
fn each(list: &Value, key: &str) -> Vec<Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v[key].clone())
        .collect()
}

#[test]
fn alertmanager_config_carries_the_routing() {
    let amc = yaml(&repo_path(&format!(
        "{BASE}/generated/alertmanagerconfig.yaml"
    )));
    assert_eq!(amc["kind"], "AlertmanagerConfig");
    let spec = &amc["spec"];
    let am = yaml(&repo_path("deploy/alertmanager/alertmanager.yml"));
    assert_eq!(spec["route"]["groupBy"], am["route"]["group_by"]);
    assert_eq!(spec["route"]["receiver"], am["route"]["receiver"]);
    assert_eq!(
        each(&spec["route"]["routes"], "receiver"),
        each(&am["route"]["routes"], "receiver")
    );
    assert_eq!(
        each(&spec["receivers"], "name"),
        each(&am["receivers"], "name")
    );
    assert_eq!(
        each(&spec["inhibitRules"], "equal"),
        each(&am["inhibit_rules"], "equal")
    );
    // Matchers become objects: `severity=~"page|critical"`.
    let m = &spec["route"]["routes"][0]["matchers"][0];
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let text = format!(
        "{}{}\"{}\"",
        s(&m["name"]),
        s(&m["matchType"]),
        s(&m["value"])
    );
    assert_eq!(text, am["route"]["routes"][0]["matchers"][0]);
}

#[test]
fn configmaps_hold_the_dashboards_and_the_mapping_exactly() {
    let dashboards = std::fs::read_dir(repo_path("dashboards")).unwrap();
    let mut n = 0;
    for entry in dashboards.map(Result::unwrap) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let cm = yaml(&repo_path(&format!(
            "{BASE}/generated/dashboard-{stem}.yaml"
        )));
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(cm["data"].as_object().unwrap().len(), 1);
        assert_eq!(
            cm["data"][name].as_str().unwrap(),
            std::fs::read_to_string(&path).unwrap(),
            "{name}"
        );
        n += 1;
    }
    assert_eq!(n, 4);
    // The kustomization applies every generated file.
    let kust = std::fs::read_to_string(repo_path(&format!("{BASE}/kustomization.yaml"))).unwrap();
    for entry in std::fs::read_dir(repo_path(&format!("{BASE}/generated"))).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            kust.contains(&format!("generated/{name}")),
            "{name} not in the kustomization"
        );
    }
    let cm = yaml(&repo_path(&format!("{BASE}/generated/mapping.yaml")));
    assert_eq!(
        cm["data"]["mapping.yml"].as_str().unwrap(),
        session_exporter::config::DEFAULT_MAPPING
    );
}

/// What `kubectl apply -k` would send for each kustomization, in a file.
/// Without kubectl (it is not a Debian package here), the resource files of
/// each kustomization, unbuilt.
fn built(tag: &str) -> Vec<PathBuf> {
    let dir = temp_dir(tag);
    let mut out = Vec::new();
    for k in [BASE, STATEFULSET, ELASTIC] {
        let file = dir.join(format!("{}.yaml", k.replace('/', "-")));
        match Command::new("kubectl")
            .arg("kustomize")
            .arg(repo_path(k))
            .output()
        {
            Ok(o) => {
                assert!(
                    o.status.success(),
                    "kubectl kustomize {k}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                std::fs::write(&file, &o.stdout).unwrap();
                out.push(file);
            }
            Err(_) => {
                eprintln!("kubectl not found: validating {k}'s files without building it");
                let kust = yaml(&repo_path(&format!("{k}/kustomization.yaml")));
                for r in kust["resources"].as_array().unwrap() {
                    let p = repo_path(k).join(r.as_str().unwrap());
                    if p.is_file() {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let mut args = vec!["-m", "kubernetes_validate", "-k", "1.32.0", "--strict"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    run(
        "python3",
        &args,
        &[("PYTHONPATH", repo_path(".tools/python"))],
    )
}

fn operator_validate(files: &[PathBuf]) -> (bool, String) {
    let mut args = vec![repo_path("tests/support/validate-crds.mjs")
        .to_str()
        .unwrap()
        .to_string()];
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("node", &args, &[("NODE_TOOLS", repo_path(".tools/node"))])
}

#[test]
fn manifests_validate_offline_against_kubernetes_and_operator_schemas() {
    let files = built("kustomize");
    let (ok, said) = kubernetes_validate(&files);
    assert!(ok && !said.contains("ERROR"), "{said}");
    for kind in [
        "deployment",
        "statefulset",
        "service",
        "configmap",
        "poddisruptionbudget",
        "serviceaccount",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind}/")),
            "{kind} not validated:\n{said}"
        );
    }
    let (ok, said) = operator_validate(&files);
    assert!(ok, "{said}");
    assert!(
        said.contains("ServiceMonitor/session-exporter valid"),
        "{said}"
    );
    assert!(
        said.contains("PrometheusRule/session-exporter valid"),
        "{said}"
    );
    assert!(
        said.contains("AlertmanagerConfig/session-exporter valid"),
        "{said}"
    );
    assert!(
        said.contains("ScaledObject/session-exporter valid"),
        "{said}"
    );

    // The validators do reject: a misspelt pod field, a malformed interval.
    let dir = temp_dir("invalid");
    let bad = dir.join("bad-deployment.yaml");
    let text = std::fs::read_to_string(repo_path(&format!("{BASE}/deployment.yaml"))).unwrap();
    std::fs::write(&bad, text.replace("readinessProbe:", "readynessProbe:")).unwrap();
    let (ok, said) = kubernetes_validate(&[bad]);
    assert!(!ok, "a misspelt field passed:\n{said}");
    let bad = dir.join("bad-servicemonitor.yaml");
    let text = std::fs::read_to_string(repo_path(&format!("{BASE}/servicemonitor.yaml"))).unwrap();
    std::fs::write(&bad, text.replace("interval: 30s", "interval: soon")).unwrap();
    let (ok, said) = operator_validate(&[bad]);
    assert!(!ok, "a bad interval passed:\n{said}");
    // Child routes too, which the operator's schema leaves free-form.
    let bad = dir.join("bad-alertmanagerconfig.yaml");
    let text = std::fs::read_to_string(repo_path(&format!(
        "{BASE}/generated/alertmanagerconfig.yaml"
    )))
    .unwrap();
    assert!(text.contains("      repeatInterval: 24h"));
    std::fs::write(
        &bad,
        text.replace("      repeatInterval: 24h", "      repeatInterval: daily"),
    )
    .unwrap();
    let (ok, said) = operator_validate(&[bad]);
    assert!(!ok, "a bad child route passed:\n{said}");
    let bad = dir.join("bad-scaledobject.yaml");
    let text = std::fs::read_to_string(repo_path(&format!("{ELASTIC}/scaledobject.yaml"))).unwrap();
    std::fs::write(
        &bad,
        text.replace("minReplicaCount: 2", "minReplicaCount: two"),
    )
    .unwrap();
    let (ok, said) = operator_validate(&[bad]);
    assert!(!ok, "a bad replica count passed:\n{said}");
}

/// The elastic overlay sets flags the exporter has, and KEDA scales on a
/// self-metric it serves.
#[test]
fn elastic_overlay_names_real_flags_and_metrics() {
    let kust =
        std::fs::read_to_string(repo_path(&format!("{ELASTIC}/kustomization.yaml"))).unwrap();
    let help = run_ok(EXPORTER, &["--help"]);
    for var in [
        "SESSION_EXPORTER_PARTITION_SLOTS",
        "SESSION_EXPORTER_PARTITION_DISCOVER",
    ] {
        assert!(kust.contains(var) && help.contains(var), "{var}");
    }
    let scaled = yaml(&repo_path(&format!("{ELASTIC}/scaledobject.yaml")));
    let query = scaled["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap();
    let metric = "session_exporter_jetstream_pending_messages";
    assert!(query.contains(metric), "{query}");
    let nats = Nats::start();
    let e = Exporter::start(&nats.url(), &[]);
    assert!(e.metrics().contains(&format!("# TYPE {metric} gauge")));
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
}

/// The pod template of a workload manifest.
fn pod(path: &str) -> Value {
    yaml(&repo_path(path))["spec"]["template"]["spec"].clone()
}

#[test]
fn statefulset_pod_is_the_deployment_pod_but_for_its_flags() {
    let strip = |mut p: Value| {
        let c = &mut p["containers"][0];
        c.as_object_mut().unwrap().remove("args");
        c.as_object_mut().unwrap().remove("env");
        p
    };
    let deployment = pod(&format!("{BASE}/deployment.yaml"));
    let statefulset = pod(&format!("{STATEFULSET}/statefulset.yaml"));
    assert_eq!(strip(deployment.clone()), strip(statefulset));
    // Restrictive by default.
    let c = &deployment["containers"][0];
    assert_eq!(deployment["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
}

/// Run the exporter as the manifest's container would: its args and env
/// (NATS pointed at `nats`, the mapping from the generated ConfigMap), as its
/// user; its probes must answer 200.
fn run_pod(path: &str, nats: &str, hostname: &str) -> Exporter {
    let spec = pod(path);
    let c = &spec["containers"][0];
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let volume = &spec["volumes"][0]["configMap"]["name"];
    let mapping_cm = yaml(&repo_path(&format!("{BASE}/generated/mapping.yaml")));
    assert_eq!(volume, &mapping_cm["metadata"]["name"]);
    let mapping = temp_dir("pod").join("mapping.yml");
    std::fs::write(
        &mapping,
        mapping_cm["data"]["mapping.yml"].as_str().unwrap(),
    )
    .unwrap();

    let uid = spec["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap()
        .to_string();
    let as_root = run("id", &["-u"], &[]).1.trim() == "0";
    let mut cmd = if as_root {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            EXPORTER,
        ]);
        cmd
    } else {
        Command::new(EXPORTER)
    };
    for arg in c["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        match arg.strip_prefix("--config.file=") {
            Some(file) => {
                assert_eq!(file, format!("{mount}/mapping.yml"));
                cmd.arg(format!("--config.file={}", mapping.display()));
            }
            None => {
                cmd.arg(arg);
            }
        }
    }
    cmd.args(["--web.listen-address", "127.0.0.1:0"]);
    cmd.env("HOSTNAME", hostname);
    for e in c["env"].as_array().unwrap() {
        let (k, v) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        cmd.env(
            k,
            if k == "SESSION_EXPORTER_NATS_URL" {
                nats
            } else {
                v
            },
        );
    }
    cmd.stdout(Stdio::null());
    let exporter = Exporter::spawn(cmd);
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap().to_string();
        common::wait_for(std::time::Duration::from_secs(20), &path, || {
            (exporter.get(&path).0 == 200).then_some(())
        });
    }
    exporter
}

#[test]
fn the_pods_run_as_their_manifests_say() {
    let nats = Nats::start_jetstream();
    let deployment = run_pod(
        &format!("{BASE}/deployment.yaml"),
        &nats.url(),
        "session-exporter-abc",
    );
    assert!(deployment.metrics().contains("session_exporter_build_info"));

    // The StatefulSet's stream must exist; its bucket the exporter creates.
    let env = pod(&format!("{STATEFULSET}/statefulset.yaml"))["containers"][0]["env"].clone();
    let stream = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SESSION_EXPORTER_NATS_JETSTREAM_STREAM")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::channels_stream(&nats.url(), &stream));
    let sts = run_pod(
        &format!("{STATEFULSET}/statefulset.yaml"),
        &nats.url(),
        "session-exporter-2",
    );
    let log = sts.log();
    assert!(
        log.contains("key session-exporter-2"),
        "the pod name is the state key:\n{log}"
    );
    let m = sts.metrics();
    assert!(m.contains("session_exporter_state_checkpoints_total"));
    // Its ordinal is its partition, of as many as the StatefulSet has.
    let replicas =
        yaml(&repo_path(&format!("{STATEFULSET}/statefulset.yaml")))["spec"]["replicas"].clone();
    let info = format!("session_exporter_partition_info{{count=\"{replicas}\",index=\"2\"}} 1");
    assert!(m.lines().any(|l| l == info), "{info}:\n{m}");
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze not found (Debian package systemd)");
    }
    let dir = temp_dir("systemd");
    let text =
        std::fs::read_to_string(repo_path("deploy/systemd/session-exporter.service")).unwrap();
    // verify wants ExecStart to exist: point it at the binary under test.
    let unit = dir.join("session-exporter.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/session-exporter", EXPORTER),
    )
    .unwrap();
    let unit = unit.to_str().unwrap();
    let (ok, said) = run("systemd-analyze", &["verify", unit], &[]);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // Exposure 2.0 or less ("OK" on systemd's scale of 10).
    let (ok, said) = run(
        "systemd-analyze",
        &["security", "--offline=true", "--threshold=20", unit],
        &[],
    );
    assert!(ok, "systemd-analyze security:\n{said}");
    assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // verify does notice mistakes: a misspelt key.
    let bad = dir.join("bad.service");
    std::fs::write(
        &bad,
        text.replace("/usr/local/bin/session-exporter", EXPORTER)
            .replace("ProtectSystem=", "ProtectSytem="),
    )
    .unwrap();
    let (_, said) = run("systemd-analyze", &["verify", bad.to_str().unwrap()], &[]);
    assert!(said.contains("ProtectSytem"), "{said}");

    // The environment file's variables are flags the exporter takes.
    let nats = Nats::start();
    let env_file =
        std::fs::read_to_string(repo_path("deploy/systemd/session-exporter.env")).unwrap();
    let vars: Vec<(String, String)> = env_file
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').unwrap())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| k != "ARGS" && k != "SESSION_EXPORTER_WEB_LISTEN_ADDRESS")
        .collect();
    assert!(vars.len() >= 2);
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let e = Exporter::start_env(&nats.url(), &[], &env);
    e.wait_ready();
}

#[test]
fn container_build_context_holds_what_the_build_needs() {
    let recipe = std::fs::read_to_string(repo_path("Containerfile")).unwrap();
    let dir = temp_dir("container-context");
    // Copy exactly what the build stage COPYs, then check it builds there.
    for line in recipe
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        for src in &parts[..parts.len() - 1] {
            let from = repo_path(src);
            assert!(from.exists(), "COPY {src}: not in the repository");
            let to = dir.join(src);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            run_ok("cp", &["-r", from.to_str().unwrap(), to.to_str().unwrap()]);
        }
    }
    assert!(
        recipe.contains("RUN scripts/release"),
        "the image builds as a release does"
    );
    let user = recipe
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "USER {user}"
    );
    // The same dependencies, without the network or a git checkout, in a clean
    // environment (none of the CARGO_* variables this test runs under).
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_path("target"));
    let mut cmd = Command::new("cargo");
    cmd.env_clear();
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let out = cmd
        .args([
            "check",
            "--locked",
            "--offline",
            "--bin",
            "session-exporter",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        // Its own target directory: the copy has the same package id as this
        // checkout, and would overwrite its build-script output (the revision).
        .env("CARGO_TARGET_DIR", target.join("container-context"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo check in the build context:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
