//! The `wtq` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    wtq::cli::main()
}
