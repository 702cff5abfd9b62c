//! Prints the DatabaseCollector CRD manifest on stdout (see `dbcollector_crds::REGENERATE`).

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match dbcollector_crds::crd_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!(
                "crdgen: {e}: {}",
                std::error::Error::source(&e).map_or(String::new(), ToString::to_string)
            );
            return ExitCode::FAILURE;
        }
    };
    match std::io::stdout().lock().write_all(yaml.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: writing stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
