//! Fitting the ecosystem: systemd's notify protocol, the metrics file, shell completions and the man page,
//! `validate` and `list`, the plugin template, and the example unit, container and Kubernetes files.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{SOON, Sandbox, describe, fixtures, receive_until, signal, task_config, wait_exit};

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[test]
fn systemd_notify_ready_reloading_watchdog_stopping() {
    let sb = Sandbox::new("notify");
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let faulty = fixtures().faulty.to_str().unwrap().to_owned();
    let env_file = sb.path("worker-env");
    let config = task_config(json!({"env_file": env_file}));
    let stderr_path = sb.path("notify.stderr");
    let mut cmd = sb.pmhost([
        "start",
        "--name",
        &sb.name,
        "--plugin",
        &faulty,
        "--workers",
        "2",
        "--execute-times",
        "0",
        "--task-config",
        &config,
    ]);
    cmd.env("NOTIFY_SOCKET", &socket_path).env("WATCHDOG_USEC", "400000");
    cmd.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&stderr_path).unwrap());
    let child = cmd.spawn().unwrap();
    let mut fg = crate::harness::Foreground { child, stderr_path };
    let mut seen = Vec::new();
    let ready = receive_until(&socket, "READY=1", &mut seen);
    assert!(ready.contains("STATUS=2/2 workers ready, generation 1"), "{ready}");
    receive_until(&socket, "WATCHDOG=1", &mut seen);
    // Workers never see the socket: only the master speaks to systemd.
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env.lines().collect::<Vec<_>>(), ["-", "-"], "workers inherited NOTIFY_SOCKET: {env}");
    let master = fg.child.id() as i32;
    signal(master, Signal::SIGHUP);
    let reloading = receive_until(&socket, "RELOADING=1", &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = receive_until(&socket, "READY=1", &mut seen);
    assert!(ready.contains("generation 2"), "{ready}");
    signal(master, Signal::SIGTERM);
    receive_until(&socket, "STOPPING=1", &mut seen);
    assert_eq!(wait_exit(&mut fg, SOON), 0);
}

#[test]
fn the_metrics_file_follows_the_prometheus_text_format() {
    let sb = Sandbox::new("metrics");
    let hello = fixtures().hello.to_str().unwrap();
    sb.start_daemon(hello, &["--workers", "2", "--execute-times", "0"]);
    let path = sb.host_status_dir().join("metrics.prom");
    let victim = sb.ready_workers()[&0];
    signal(victim, Signal::SIGKILL);
    let text = sb.wait_for("a crash counted and slot 0 refilled", SOON, || {
        let text = std::fs::read_to_string(&path).ok()?;
        (text.contains("reason=\"crash\"} 1")
            && text.contains(&format!("pmhost_workers_up{{host=\"{0}\",task=\"{0}\"}} 2", sb.name)))
        .then_some(text)
    });
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        assert!(name.bytes().all(valid) && !name.starts_with(|c: char| c.is_ascii_digit()), "bad name in {line:?}");
        assert!(series.ends_with('}') && series.contains("host=\""), "bad labels in {line:?}");
    }
    for name in [
        "pmhost_up",
        "pmhost_generation",
        "pmhost_workers_wanted",
        "pmhost_executions_total",
        "pmhost_worker_rss_bytes",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
    }
    assert!(text.contains("pmhost_spawn_latency_median_seconds{"), "no spawn latency:\n{text}");
    sb.stop();
    assert!(!path.exists(), "metrics of a stopped host are left behind");
}

#[test]
fn completions_and_man_page_generate() {
    let sb = Sandbox::new("shell");
    for (shell, needle) in [("bash", "complete -F"), ("zsh", "#compdef pmhost"), ("fish", "complete -c pmhost")] {
        let out = sb.run(["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle) && text.contains("restart"), "{shell}: {text}");
    }
    let out = sb.run(["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH pmhost") && page.contains("start") && page.contains("status"), "{page}");
    let out = sb.run(["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn validate_reports_the_api_version_and_the_init_outcome_without_starting_anything() {
    let sb = Sandbox::new("validate");
    let f = fixtures();
    let out = sb.run(["validate", "--plugin", f.hello.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("pmhost-plugin-api {}", pmhost_plugin_api::API_VERSION))
            && stdout.contains("init and shutdown succeeded"),
        "{stdout}"
    );
    let cases = [
        (f.faulty.clone(), json!({"init": "fail", "message": "no token"}), "plugin init failed: no token"),
        (f.faulty.clone(), json!({"init": "abort"}), "crashed the probe with SIGABRT"),
        (f.faulty.clone(), json!({"init_ms": 60000}), "did not finish within"),
        (f.not_a_plugin.clone(), json!({}), "is not a pmhost plugin"),
        (f.old_api.clone(), json!({}), "built against pmhost-plugin-api 0.1.0"),
    ];
    for (plugin, config, expected) in cases {
        let config = task_config(config);
        let out = sb.run([
            "validate",
            "--plugin",
            plugin.to_str().unwrap(),
            "--task-config",
            &config,
            "--init-timeout",
            "2s",
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(expected), "{expected}: {}", describe(&out));
    }
    assert!(sb.live_processes().is_empty());
    assert!(!sb.pid_root().exists(), "validate created run directories");
}

#[test]
fn list_shows_running_masters_and_stale_pid_files() {
    let sb = Sandbox::new("list");
    let hello = fixtures().hello.to_str().unwrap();
    for (suffix, workers) in [("a", "1"), ("b", "2")] {
        let name = format!("{}-{suffix}", sb.name);
        let out =
            sb.run(["start", "-d", "--name", &name, "--plugin", hello, "--workers", workers, "--execute-times", "0"]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    std::fs::write(sb.pid_root().join(format!("{}-gone.pid", sb.name)), "999999\n").unwrap();
    // Another user's pid file is reported as refused, and the others are still listed.
    let foreign = sb.pid_root().join(format!("{}-foreign.pid", sb.name));
    std::fs::write(&foreign, "999998\n").unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let out = sb.run(["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find = |suffix: &str| list.iter().find(|e| e["name"] == format!("{}-{suffix}", sb.name)).cloned().unwrap();
    assert_eq!(find("a")["state"], "running");
    assert_eq!(find("b")["workers"], 2);
    assert!(find("b")["pid"].is_i64());
    assert_eq!(find("gone")["state"], "stale");
    assert!(find("gone")["pid"].is_null());
    assert_eq!(find("foreign")["state"], "refused", "{list:?}");
    assert!(find("foreign")["problem"].as_str().unwrap().contains("belongs to uid 65534"), "{list:?}");
    let out = sb.run(["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}-b", sb.name)), "{}", describe(&out));
    for suffix in ["a", "b"] {
        let out = sb.run(["stop", "--name", &format!("{}-{suffix}", sb.name)]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
}

#[test]
fn the_plugin_template_builds_and_runs_as_the_walkthrough_says() {
    let sb = Sandbox::new("template");
    let inbox = sb.path("inbox");
    let done = sb.path("done");
    std::fs::create_dir_all(&inbox).unwrap();
    for i in 0..5 {
        std::fs::write(inbox.join(format!("item-{i}")), format!("payload {i}")).unwrap();
    }
    let config = task_config(json!({"inbox": inbox, "done": done}));
    let out = sb.run([
        "start",
        "-d",
        "--name",
        &sb.name,
        "--plugin",
        fixtures().template.to_str().unwrap(),
        "--workers",
        "2",
        "--execute-times",
        "0",
        "--execute-usleep",
        "20ms",
        "--task-config",
        &config,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sb.wait_for("every item handled", SOON, || (std::fs::read_dir(&done).ok()?.count() == 5).then_some(()));
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0);
    sb.stop();
    let text = sb.log_text("run.");
    assert!(text.contains("handled") && text.contains("bye handled="), "{text}");
}

/// Every pmhost command line in the example files parses (an unknown flag would exit 2 before --help).
#[test]
fn the_example_files_use_real_commands_and_flags() {
    let sb = Sandbox::new("examples");
    let mut commands: Vec<Vec<String>> = Vec::new();
    let unit = std::fs::read_to_string(repo("examples/systemd/pmhost@.service")).unwrap();
    for line in unit.lines().filter(|l| l.starts_with("Exec")) {
        let (_, command) = line.split_once('=').unwrap();
        commands.push(command.split_whitespace().skip(1).map(|w| w.replace("%i", "x")).collect());
    }
    let k8s = std::fs::read_to_string(repo("examples/container/k8s.yaml")).unwrap();
    for line in k8s.lines().filter(|l| l.contains("\"/usr/local/bin/pmhost\"")) {
        let list = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
        let words: Vec<String> = serde_json::from_str(list).unwrap();
        commands.push(words.into_iter().skip(1).collect());
    }
    assert!(commands.len() >= 5, "{commands:?}");
    for mut args in commands {
        args.push("--help".to_owned());
        let out = sb.run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}\n{}", describe(&out));
    }
    // The container's config is valid, and the pod's grace period outlasts the host's stop timeout.
    let out = sb.run(["validate", "--config", repo("examples/container/pmhost.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "the plugin path only exists in the image: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/opt/pmhost/plugins/libhello.so"), "{}", describe(&out));
    let grace: u64 = k8s
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let config = std::fs::read_to_string(repo("examples/container/pmhost.toml")).unwrap();
    let stop: u64 = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("stop_timeout = \""))
        .unwrap()
        .split('s')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(grace > stop, "grace {grace}s must exceed stop_timeout {stop}s");
    let dockerfile = std::fs::read_to_string(repo("examples/container/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("cargo build --release -p pmhost -p hello") && dockerfile.contains("STOPSIGNAL SIGTERM")
    );
}
