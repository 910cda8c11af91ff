//! The `contentv` command line: `generate` (one video or a JSONL batch), `decode` (saved
//! latents to video), `info` (check a model folder), `serve` (web page and video API).
//!
//! Messages go to stderr; `--json` puts a machine-readable summary on stdout. Every error is
//! a message and a non-zero exit status (1 for run-time errors, 2 for bad arguments); panics
//! are caught and reported as internal errors.
pub mod args;
pub mod calibrate;
pub mod decode;
pub mod device;
pub mod generate;
pub mod info;
pub mod load;
pub mod quantize;
pub mod request;
pub mod roofline;
pub mod serve;

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
    if let Some(msg) = non_utf8_argument(&args) {
        eprintln!("error: {msg}");
        return 2;
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return code;
        }
    };
    // Ctrl-C, SIGTERM and SIGHUP remove the partial output being written (the next run that
    // writes the same output removes what a SIGKILL left).
    crate::io::fsutil::install_interrupt_cleanup();
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
        args::Command::Device(a) => device::run(a, &Ui { json: a.json }),
        args::Command::Roofline(a) => roofline::run(a, &Ui { json: a.json }),
        args::Command::CalibrateCache(a) => calibrate::run(a, &Ui { json: a.json }),
        args::Command::Serve(a) => serve::run(a, &Ui { json: false }),
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

/// A message naming the first argument that is not valid UTF-8 (and the flag it belongs to):
/// clap's own message does not say which one. Paths that are not UTF-8 are accepted on Unix.
fn non_utf8_argument(args: &[std::ffi::OsString]) -> Option<String> {
    const PATH_FLAGS: [&str; 10] = [
        "--data-dir",
        "--model",
        "--output",
        "-o",
        "--init-noise",
        "--save-latents",
        "--prompts",
        "--output-dir",
        "--latents",
        "--out",
    ];
    for (i, a) in args.iter().enumerate().skip(1) {
        if a.to_str().is_some() {
            continue;
        }
        let prev = args[i - 1].to_str().unwrap_or("");
        let shown = a.to_string_lossy();
        // `--flag=value`: the flag is the part before '=' (ASCII, so it survives the lossy view)
        let inline = shown
            .strip_prefix("--")
            .and_then(|r| r.split_once('='))
            .map(|(f, _)| format!("--{f}"))
            .or_else(|| (shown.starts_with("-o") && shown.len() > 2).then(|| "-o".to_string()));
        let flag = inline.clone().unwrap_or_else(|| prev.to_string());
        if cfg!(unix) && PATH_FLAGS.contains(&flag.as_str()) {
            continue; // a file name in another encoding: fine on Unix
        }
        let what = if inline.is_some() || (prev.starts_with('-') && i > 1) {
            format!("the value of {flag}")
        } else {
            format!("argument {i}")
        };
        return Some(format!(
            "{what} is not valid UTF-8 text ({shown:?}, U+FFFD marks the bad bytes): pass text in UTF-8 (check the terminal's or the script's encoding)"
        ));
    }
    None
}
