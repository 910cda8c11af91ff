//! `contentv`: see `contentv --help`.
fn main() {
    let code = contentv::cli::main_with_args(std::env::args_os().collect());
    std::process::exit(code);
}
