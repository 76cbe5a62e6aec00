//! Every way a plugin can be unusable gets one readable sentence naming the file, a non-zero exit, and leaves
//! no master behind.

use crate::harness::{Sandbox, describe, fixtures, task_config};
use serde_json::json;

/// Starts `plugin` in the foreground and checks the refusal: exit 1, `expected` fragments in the one-line error,
/// nothing left running, no pid file held.
fn refused(label: &str, plugin: &std::path::Path, extra: &[&str], expected: &[&str]) {
    let sandbox = Sandbox::new(label);
    let mut args = vec!["start", "--name", &sandbox.name, "--workers", "2", "--plugin"];
    let plugin = plugin.to_str().expect("utf-8 path").to_owned();
    args.push(&plugin);
    args.extend_from_slice(extra);
    let out = sandbox.run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_line =
        stderr.lines().find(|l| l.starts_with("pmhost: error:")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    for fragment in expected {
        assert!(error_line.contains(fragment), "error line lacks {fragment:?}: {error_line}");
    }
    assert!(!stderr.contains("Attempted to panic across the ffi boundary"), "{stderr}");
    assert!(sandbox.live_processes().is_empty(), "processes left: {:?}", sandbox.live_processes());
    let pid_file = sandbox.pid_file();
    assert!(!pid_file.exists(), "pid file left behind at {}", pid_file.display());
}

#[test]
fn missing_plugin_file() {
    let path = std::env::temp_dir().join("pmhost-no-such-plugin.so");
    refused("missing", &path, &[], &["plugin file", "pmhost-no-such-plugin.so", "does not exist"]);
}

#[test]
fn file_that_is_not_a_shared_library() {
    let sandbox = Sandbox::new("notelf-src");
    let path = sandbox.path("job.so");
    std::fs::write(&path, "#!/bin/sh\necho hi\n").unwrap();
    refused("notelf", &path, &[], &["job.so", "is not a shared library"]);
}

#[test]
fn library_that_is_not_a_pmhost_plugin() {
    let f = fixtures();
    refused("notplugin", &f.not_a_plugin, &[], &["libnot_a_plugin.so", "is not a pmhost plugin", "export_job!"]);
}

#[test]
fn plugin_built_against_an_incompatible_api() {
    let f = fixtures();
    // The fixture stands for a plugin built against the previous release, 0.1.
    let host_version = format!("this pmhost speaks {}", pmhost_plugin_api::API_VERSION);
    refused(
        "oldapi",
        &f.old_api,
        &[],
        &["libold_api_plugin.so", "built against pmhost-plugin-api 0.1.0", &host_version, "rebuild"],
    );
}

#[test]
fn init_failure_fails_the_start_with_the_plugins_message() {
    let f = fixtures();
    let config = task_config(json!({"init": "fail", "message": "cannot reach db.example:5432"}));
    refused(
        "initfail",
        &f.faulty,
        &["--task-config", &config],
        &["plugin init failed", "cannot reach db.example:5432"],
    );
}

#[test]
fn init_panic_fails_the_start_with_the_panic_message() {
    let f = fixtures();
    let config = task_config(json!({"init": "panic", "message": "bad config value"}));
    refused(
        "initpanic",
        &f.faulty,
        &["--task-config", &config],
        &["plugin init panicked", "bad config value", "lib.rs"],
    );
}

#[test]
fn init_abort_fails_the_start_naming_the_signal() {
    let f = fixtures();
    let config = task_config(json!({"init": "abort"}));
    refused("initabort", &f.faulty, &["--task-config", &config], &["during start", "SIGABRT"]);
}
