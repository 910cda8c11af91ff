//! Running the `contentv` binary from a test: the one runner every CLI test uses, the combined
//! text of a run for assertion messages, the clean-failure check, and the tiny-run flags.
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Output};

/// The binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_contentv");

/// `contentv ARGS` on the CPU (`CONTENTV_FORCE_CPU=1`: no GPU is touched even where one exists).
pub fn cpu_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(BIN);
    c.args(args).env("CONTENTV_FORCE_CPU", "1");
    c
}

/// Runs `cmd` to completion; panics only if the binary cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("cannot start the contentv binary")
}

/// `contentv ARGS` on the CPU, to completion.
pub fn run(args: &[&str]) -> Output {
    output(&mut cpu_command(args))
}

/// Exit status, stdout and stderr of a run, for assertion messages and `contains` checks.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `args` on the CPU, asserts a clean failure (exit status 1 or 2, no panic) whose message
/// contains `want` (case-insensitive). Returns the combined text.
pub fn fails_with(args: &[&OsStr], want: &str) -> String {
    let o = output(&mut cpu_command(args));
    let all = text(&o);
    assert!(!o.status.success(), "{args:?} should fail:\n{all}");
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "{args:?}: not a clean error exit:\n{all}"
    );
    assert!(
        !all.contains("panicked") && !all.contains("internal error"),
        "{args:?} panicked:\n{all}"
    );
    assert!(
        all.to_lowercase().contains(&want.to_lowercase()),
        "{args:?}: the error should mention {want:?}:\n{all}"
    );
    all
}

/// `&str` arguments as owned OS strings (to mix with arguments that are not UTF-8).
pub fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// Borrowed views of owned OS-string arguments.
pub fn refs(v: &[OsString]) -> Vec<&OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

/// Tiny generation flags: 9 frames of 48x32, 2 steps, 12 fps, on the CPU (`args[2]` is the
/// device), the tiny model by default.
pub fn tiny_args<'a>(out: &'a str, seed: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--device",
        "cpu",
        "--prompt",
        "a red ball bouncing",
        "--frames",
        "9",
        "--width",
        "48",
        "--height",
        "32",
        "--steps",
        "2",
        "--fps",
        "12",
        "--seed",
        seed,
        "--output",
        out,
    ]
}

/// `tiny_args` at the smallest video the tiny model makes (5 frames of 32x32): for the tests
/// that run many generations on the emulated device, where the decode dominates.
pub fn smallest_tiny_args<'a>(out: &'a str, seed: &'a str) -> Vec<&'a str> {
    let mut a = tiny_args(out, seed);
    for (flag, value) in [("--frames", "5"), ("--width", "32"), ("--height", "32")] {
        let i = a
            .iter()
            .position(|x| *x == flag)
            .expect("tiny_args has the flag");
        a[i + 1] = value;
    }
    a
}

/// A batch run of `jsonl` into `outdir`: 5 frames of 32x32, 1 step, CPU, JSON summary, plus
/// `extra` flags.
pub fn run_batch(jsonl: &Path, outdir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--device",
        "cpu",
        "--prompts",
        jsonl.to_str().unwrap(),
        "--output-dir",
        outdir.to_str().unwrap(),
        "--frames",
        "5",
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}
