//! The `courier` binary as an operator runs it: what it says about its
//! configuration, and how its log reads outside a terminal.

use std::process::{Command, Output};

/// Runs `courier migrate` on a SQLite file of its own with `vars` set (and
/// no other COURIER variables), its output piped.
fn migrate(vars: &[(&str, &str)]) -> Output {
    let dir = std::env::temp_dir().join(format!("courier-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    command.arg("migrate").current_dir(&dir);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("COURIER")) {
        command.env_remove(key);
    }
    command
        .env(
            "COURIER__DATABASE__URL",
            format!("sqlite://{}", dir.join("c.db").display()),
        )
        .env_remove("RUST_LOG")
        .envs(vars.iter().copied());
    let output = command.output().expect("run courier");
    std::fs::remove_dir_all(&dir).ok();
    output
}

#[test]
fn a_variable_with_one_underscore_is_named_and_piped_logs_have_no_colour() {
    let output = migrate(&[("COURIER_DELIVERY__TIMEOUT_MS", "5")]);
    assert!(output.status.success(), "{output:?}");
    let log = String::from_utf8(output.stderr).unwrap();
    assert!(
        log.contains("COURIER_DELIVERY__TIMEOUT_MS configures nothing")
            && log.contains("COURIER__DELIVERY__TIMEOUT_MS"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
}

#[test]
fn an_unknown_log_level_stops_courier_naming_the_key() {
    let output = migrate(&[("COURIER__LOG__LEVEL", "verbose")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains("log.level") && error.contains("\"verbose\" is not a log level"),
        "{error}"
    );
}
