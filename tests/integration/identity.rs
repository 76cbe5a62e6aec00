//! Per-task process settings: `user`, `group`, `environment`, `clear_env`, `working_directory`, `umask` and
//! `nice`, applied in each worker before the plugin loads, and refused with a clear error when they cannot apply.
//! The tests run as root (as the suite does); the master-not-root case runs pmhost as `nobody` with `setpriv`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{SOON, Sandbox, describe, fixtures};

fn write_config(sb: &Sandbox, text: &str) -> PathBuf {
    let path = sb.path("pmhost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody").unwrap().expect("a user named nobody");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// What the faulty fixture's `probe_file` says: `uid`, `gid`, `cwd` and each `env` variable.
fn probe(path: &Path) -> Option<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    let (mut facts, mut env) = (BTreeMap::new(), BTreeMap::new());
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("env", pair)) => {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                env.insert(name.to_owned(), value.to_owned());
            }
            Some((key, value)) => {
                facts.insert(key.to_owned(), value.to_owned());
            }
            None => {}
        }
    }
    Some((facts, env))
}

/// `Uid:` of `/proc/PID/status`: real, effective, saved, filesystem.
fn proc_ids(pid: i32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|ids| ids.split_whitespace().filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default()
}

fn task_workers(status: &Value, task: &str) -> Vec<Value> {
    status["tasks"]
        .as_array()
        .and_then(|tasks| tasks.iter().find(|t| t["name"] == task))
        .and_then(|t| t["workers"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_task_runs_as_its_user_with_its_umask_environment_directory_and_niceness() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let sb = Sandbox::new("identity");
    let (nobody_uid, nobody_gid) = nobody();
    // nobody may pass through the sandbox (mode 0711: not list it) and write in its working directory only.
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let work = sb.path("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let plain = sb.path("plain");
    std::fs::create_dir(&plain).unwrap();
    let config = write_config(
        &sb,
        &format!(
            r#"
[host]
name = "{name}"

[[task]]
name = "jailed"
plugin = "{faulty}"
workers = 1
execute_times = 0
execute_usleep = "50ms"
user = "nobody"
umask = "027"
nice = 7
clear_env = true
working_directory = "work"
[task.environment]
PROBE_GREETING = "hello world"
PROBE_NUMBER = 42
[task.config]
probe_file = "probe"

[[task]]
name = "plain"
plugin = "{faulty}"
workers = 1
execute_times = 0
execute_usleep = "50ms"
working_directory = "{plain}"
[task.environment]
PROBE_GREETING = "bonjour"
[task.config]
probe_file = "probe"
"#,
            name = sb.name,
            faulty = fixtures().faulty.display(),
            plain = plain.display(),
        ),
    );
    let mut start = sb.pmhost(["start", "-d", "--config", config.to_str().unwrap()]);
    start.env("PROBE_INHERITED", "from the master");
    let out = start.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let (facts, env) = sb.wait_for("the jailed worker's probe", SOON, || probe(&work.join("probe")));
    assert_eq!(facts["uid"], nobody_uid.to_string());
    assert_eq!(facts["gid"], nobody_gid.to_string());
    assert_eq!(facts["cwd"], work.display().to_string());
    assert_eq!(env.get("PROBE_GREETING").map(String::as_str), Some("hello world"));
    assert_eq!(env.get("PROBE_NUMBER").map(String::as_str), Some("42"));
    assert_eq!(env.get("USER").map(String::as_str), Some("nobody"));
    assert!(env.contains_key("PATH"), "{env:?}");
    assert!(!env.contains_key("PROBE_INHERITED"), "clear_env keeps the master's variables out: {env:?}");
    let meta = std::fs::metadata(work.join("probe")).unwrap();
    assert_eq!(meta.uid(), nobody_uid, "the plugin's file belongs to nobody");
    assert_eq!(meta.mode() & 0o777, 0o640, "0666 under umask 027");

    let (facts, env) = sb.wait_for("the plain worker's probe", SOON, || probe(&plain.join("probe")));
    assert_eq!(facts["uid"], "0");
    assert_eq!(facts["cwd"], plain.display().to_string());
    assert_eq!(env.get("PROBE_GREETING").map(String::as_str), Some("bonjour"));
    assert_eq!(env.get("PROBE_INHERITED").map(String::as_str), Some("from the master"), "{env:?}");

    // The kernel's view and the status agree: the jailed worker runs as nobody (real, effective, saved and
    // filesystem ids), at niceness 7; the status shows its uid, and no uid for the master's own user.
    let status = sb.wait_for("both workers in the status", SOON, || {
        let status = sb.status()?;
        let ready =
            |task| task_workers(&status, task).iter().any(|w| matches!(w["state"].as_str(), Some("idle" | "busy")));
        (ready("jailed") && ready("plain")).then_some(status)
    });
    let jailed = &task_workers(&status, "jailed")[0];
    let pid = jailed["pid"].as_i64().unwrap() as i32;
    assert_eq!(proc_ids(pid, "Uid:"), vec![nobody_uid; 4]);
    assert_eq!(proc_ids(pid, "Gid:"), vec![nobody_gid; 4]);
    assert_eq!(proc_ids(pid, "Groups:"), vec![nobody_gid]);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let nice: i32 = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(16).unwrap().parse().unwrap();
    assert_eq!(nice, 7);
    assert_eq!(jailed["uid"].as_u64(), Some(u64::from(nobody_uid)), "{jailed}");
    assert!(task_workers(&status, "plain")[0].get("uid").is_none(), "{status}");
    let table = sb.run(["status", "--name", &sb.name]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&format!("(uid {nobody_uid})")), "{}", describe(&table));
    sb.stop();
}

fn one_task(sb: &Sandbox, settings: &str) -> PathBuf {
    write_config(
        sb,
        &format!(
            "[host]\nname = \"{}\"\n\n[[task]]\nname = \"t\"\nplugin = \"{}\"\nworkers = 1\n{settings}\n",
            sb.name,
            fixtures().faulty.display()
        ),
    )
}

#[test]
fn settings_that_cannot_apply_are_refused_with_a_clear_error() {
    let sb = Sandbox::new("identity-errors");
    let cases = [
        ("user = \"no-such-user-pmhost\"", "unknown user \"no-such-user-pmhost\""),
        ("group = \"no-such-group-pmhost\"", "unknown group \"no-such-group-pmhost\""),
        ("working_directory = \"missing\"", "working_directory"),
        ("umask = \"0999\"", "umask is octal permission bits"),
        ("nice = 40", "nice must be -20 to 19, not 40"),
    ];
    for (settings, message) in cases {
        let config = one_task(&sb, settings);
        let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0), "{settings}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{settings}: expected {message:?} in\n{}", describe(&out));
        if settings.starts_with("working_directory") {
            assert!(stderr.contains(&sb.path("missing").display().to_string()), "{}", describe(&out));
        }
        assert!(sb.status().is_none(), "nothing started for {settings}");
    }
}

#[test]
fn a_master_that_is_not_root_cannot_switch_user() {
    if !nix::unistd::Uid::effective().is_root() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let sb = Sandbox::new("identity-notroot");
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = one_task(&sb, "user = \"root\"");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cmd = sb.pmhost(["start", "-d", "--config", config.to_str().unwrap()]);
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
    let envs: Vec<_> = cmd.get_envs().map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned))).collect();
    let mut setpriv = std::process::Command::new("/usr/bin/setpriv");
    setpriv.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(program).args(args);
    for (key, value) in envs {
        match value {
            Some(value) => setpriv.env(key, value),
            None => setpriv.env_remove(key),
        };
    }
    let out = setpriv.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("only a master running as root can switch user or group"), "{}", describe(&out));
}

#[test]
fn a_directory_the_user_cannot_enter_fails_the_worker_with_the_reason() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let sb = Sandbox::new("identity-private");
    // The directory exists (so the start's check passes) but is root's, mode 0700: nobody cannot enter it.
    let private = sb.path("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = one_task(&sb, &format!("user = \"nobody\"\nworking_directory = \"{}\"", private.display()));
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker setup failed"), "{}", describe(&out));
    assert!(stderr.contains(&format!("working_directory {}", private.display())), "{}", describe(&out));
}

#[test]
fn a_restart_to_a_user_that_cannot_apply_rolls_back_with_the_reason() {
    let sb = Sandbox::new("identity-restart");
    let settings = "execute_times = 0\nexecute_usleep = \"50ms\"";
    let config = one_task(&sb, settings);
    let out = sb.run(["start", "-d", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let before = sb.wait_for("a ready worker", SOON, || Some(sb.ready_workers()).filter(|w| w.len() == 1));

    // The file now names a user nobody has: `validate` says so, and a restart's new worker fails its setup, so
    // the restart rolls back and the old worker carries on.
    one_task(&sb, &format!("{settings}\nuser = \"no-such-user-pmhost\""));
    let out = sb.run(["validate", "--config", config.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unknown user \"no-such-user-pmhost\""),
        "{}",
        describe(&out)
    );
    let out = sb.run(["restart", "--config", config.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rolled back") && stderr.contains("unknown user"), "{}", describe(&out));
    assert_eq!(sb.ready_workers(), before, "the old worker keeps running");
    sb.stop();
}
