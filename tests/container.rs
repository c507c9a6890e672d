//! No container engine runs here, so the Containerfile and compose.yaml are checked as
//! files: they parse, every setting they pass exists, and their services, ports and
//! commands agree with the documentation (docs/operations.md) and with the binary.

use std::{collections::BTreeMap, path::Path, process::Command};

use call_orchestrator::{config::KEYS, tools::sim::SimConfig};
use clap::Args;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_call-orchestrator");

fn compose() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("compose.yaml")).unwrap())
        .unwrap()
}

/// A service's environment, with YAML merge keys (`<<: *database`) resolved.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(map) = service["environment"].as_mapping() else {
        return env;
    };
    for (key, value) in map {
        let key = key.as_str().unwrap();
        if key == "<<" {
            for (k, v) in value.as_mapping().unwrap() {
                env.insert(k.as_str().unwrap().to_owned(), scalar(v));
            }
        } else {
            env.insert(key.to_owned(), scalar(value));
        }
    }
    env
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Every environment variable the simulator reads.
fn simulator_variables() -> Vec<String> {
    SimConfig::augment_args(clap::Command::new("sim"))
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

fn is_subcommand(name: &str) -> bool {
    Command::new(BIN)
        .args([name, "--help"])
        .output()
        .unwrap()
        .status
        .success()
}

fn resolve(mut yaml: Value) -> Value {
    yaml.apply_merge().unwrap();
    yaml
}

#[test]
fn compose_services_agree_with_the_docs() {
    let compose = resolve(compose());
    let services = &compose["services"];
    for name in ["postgres", "migrate", "serve", "provider-sim"] {
        assert!(
            services.get(name).is_some(),
            "compose.yaml lacks the {name} service"
        );
    }

    // PostgreSQL: a volume and a health check.
    let postgres = &services["postgres"];
    assert!(
        postgres["volumes"][0]
            .as_str()
            .unwrap()
            .ends_with(":/var/lib/postgresql/data")
    );
    assert!(postgres["healthcheck"]["test"].is_sequence());
    let pg_env = environment(postgres);

    // Every service of ours runs a real subcommand with settings that exist.
    let sim_vars = simulator_variables();
    for (name, expected) in [
        ("migrate", "migrate"),
        ("serve", "serve"),
        ("provider-sim", "provider-sim"),
    ] {
        let service = &services[name];
        assert_eq!(command(service), [expected], "{name}");
        assert!(is_subcommand(expected), "{expected} is not a subcommand");
        for key in environment(service).keys() {
            assert!(
                KEYS.contains(&key.as_str()) || sim_vars.contains(key),
                "{name} sets {key}, which nothing reads"
            );
        }
    }

    // The database the service is pointed at is the one PostgreSQL creates.
    for name in ["migrate", "serve"] {
        let env = environment(&services[name]);
        assert_eq!(env["DB_HOST"], "postgres");
        assert_eq!(env["DB_PORT"], "5432");
        assert_eq!(env["DB_USERNAME"], pg_env["POSTGRES_USER"]);
        assert_eq!(env["DB_PASSWORD"], pg_env["POSTGRES_PASSWORD"]);
        assert_eq!(env["DB_DATABASE"], pg_env["POSTGRES_DB"]);
    }
    assert_eq!(
        services["migrate"]["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );

    // Several replicas of serve, after the migration, on the service's default port.
    let serve = &services["serve"];
    assert!(serve["deploy"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        serve["depends_on"]["migrate"]["condition"],
        "service_completed_successfully"
    );
    let env = environment(serve);
    for required in ["AI_CALL_API_URL", "AI_CALL_API_KEY", "WEBHOOK_BASE_URL"] {
        assert!(env.contains_key(required), "serve needs {required}");
    }
    assert_eq!(env["PORT"], "3000");
    assert!(serve["ports"][0].as_str().unwrap().ends_with(":3000"));
    assert_eq!(env["WEBHOOK_BASE_URL"], "http://serve:3000");

    // serve talks to the simulator where it listens, with its key and its secret.
    let sim = environment(&services["provider-sim"]);
    assert_eq!(
        env["AI_CALL_API_URL"],
        format!("http://provider-sim:{}/v1/calls", sim["SIM_PORT"])
    );
    assert_eq!(env["AI_CALL_API_KEY"], sim["SIM_API_KEY"]);
    assert_eq!(env["WEBHOOK_SECRET"], sim["SIM_WEBHOOK_SECRET"]);
    assert_eq!(
        sim["SIM_HOST"], "0.0.0.0",
        "the simulator must be reachable from other containers"
    );

    // Every setting passed is one the binary accepts as it is given.
    let output = Command::new(BIN)
        .arg("migrate")
        .env_clear()
        .envs(env.iter().filter(|(k, _)| !k.starts_with("DB_")))
        .env("DATABASE_URL", "not-a-url")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("DATABASE_URL"),
        "only the planted error may be reported: {stderr}"
    );
}

#[test]
fn the_containerfile_builds_a_small_non_root_image_with_a_health_check() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Containerfile")).unwrap();
    let instructions: Vec<(String, String)> = text
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(' ').unwrap();
            (op.to_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let of = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
            .collect()
    };

    assert_eq!(of("FROM").len(), 2, "a build stage and a runtime stage");
    let runtime = *of("FROM").last().unwrap();
    assert!(
        runtime.contains("distroless") || runtime.contains("slim"),
        "{runtime}"
    );
    let user = *of("USER").last().expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    let healthcheck = of("HEALTHCHECK").first().copied().expect("a HEALTHCHECK");
    assert!(
        healthcheck.contains("call-orchestrator\", \"healthcheck\""),
        "{healthcheck}"
    );
    assert!(of("ENTRYPOINT")[0].contains("call-orchestrator"));
    assert_eq!(*of("CMD").last().unwrap(), "[\"serve\"]");
    assert_eq!(of("EXPOSE"), ["3000"]);
    for env in of("ENV") {
        for pair in env.split_whitespace() {
            let key = pair.split('=').next().unwrap();
            assert!(KEYS.contains(&key), "ENV {key} is not a setting");
        }
    }
    assert!(
        of("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked"))
    );
    // Everything it copies exists.
    for copy in of("COPY").into_iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(source).exists(),
                "COPY {source}: no such file"
            );
        }
    }
}
