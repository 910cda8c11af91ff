//! The `contentv` command line: `generate` (one video or a JSONL batch), `decode` (saved
//! latents to video), `info` (check a model folder).
//!
//! Messages go to stderr; `--json` puts a machine-readable summary on stdout. Every error is
//! a message and a non-zero exit status (1 for run-time errors, 2 for bad arguments); panics
//! are caught and reported as internal errors.
pub mod args;
pub mod decode;
pub mod generate;
pub mod info;
pub mod load;
pub mod quantize;
pub mod request;

use clap::Parser;

use crate::error::Error;
pub use args::Cli;

/// Where human-readable messages go (stderr).
pub struct Ui {
    pub json: bool,
}

impl Ui {
    pub fn info(&self, m: &str) {
        eprintln!("{m}");
    }
    pub fn note(&self, m: &str) {
        eprintln!("note: {m}");
    }
    pub fn warn(&self, m: &str) {
        eprintln!("warning: {m}");
    }
}

/// Runs the command line; returns the process exit status.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return code;
        }
    };
    // A panic anywhere is a bug: report it as one line instead of a backtrace dump.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("contentv: internal error{at}: {msg}");
    }));
    let res = std::panic::catch_unwind(|| match &cli.command {
        args::Command::Generate(a) => generate::run(a, &Ui { json: a.json }),
        args::Command::Decode(a) => decode::run(a, &Ui { json: a.json }),
        args::Command::Info(a) => info::run(a, &Ui { json: a.json }),
        args::Command::Quantize(a) => quantize::run(a, &Ui { json: a.json }),
    });
    match res {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            match e {
                Error::Input(_) => 2,
                _ => 1,
            }
        }
        Err(_) => 70,
    }
}
