//! `shmpool`: inspect and manage pools, and run the multi-process demo (see `alloc_shm::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // SAFETY: restores the default disposition of SIGPIPE before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let this = std::env::current_exe().map(|exe| vec![exe.into_os_string()]).unwrap_or_default();
    ExitCode::from(alloc_shm::cli::main(std::env::args_os().collect(), this))
}
