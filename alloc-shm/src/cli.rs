//! The `shmpool` tool: inspect and manage pools, and run the multi-process demo. One
//! implementation for the Rust binary (`alloc-shm/src/bin/shmpool.rs`) and the Python package's
//! `shmpool` command (`python -m shmpool`).

use std::ffi::OsString;
use std::io::{BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::descriptor::{from_hex, read_frame, to_hex, write_end, write_frame};
use crate::{current_pid, list_pools, verify, Liveness, Pool, PoolError, PoolOptions};

#[derive(Parser)]
#[command(name = "shmpool", about = "Lock-free shared-memory pools: inspect, repair, demo")]
struct Cli {
    /// Directory holding the pools.
    #[arg(long, global = true, default_value = crate::name::DEFAULT_DIR)]
    dir: PathBuf,
    /// Act on pools of any owner (root inspecting other users' pools); by default only pools
    /// owned by this user are attached, root's included.
    #[arg(long, global = true)]
    any_owner: bool,
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// List pools: size, use, allocations, creator (read-only: read access to a pool is enough).
    Ls,
    /// Usage, size classes and owners of one pool (read-only).
    Info { name: String },
    /// Verify every invariant of a pool's heap.
    Check { name: String },
    /// Give back what processes that no longer exist held or left half done (online: other
    /// processes may keep working).
    Reclaim { name: String },
    /// An fsck for a pool whose metadata was damaged: reclaim, then rebuild what the metadata
    /// allows. Refused while another attached process is alive (it might be mid-operation)
    /// unless --force.
    Repair {
        name: String,
        /// Repair even though other attached processes are alive.
        #[arg(long)]
        force: bool,
    },
    /// Destroy a pool (warning about processes still attached). A file that cannot be read as a
    /// pool (another layout version, or not a pool) is removed only with --force: processes
    /// may still use it, and nothing tells them it is gone.
    Rm {
        name: String,
        /// Remove the file even though it cannot be read as a pool.
        #[arg(long)]
        force: bool,
    },
    /// Destroy pools whose creator and every attached process are gone.
    Gc,
    /// Several processes pass allocations around a ring, verify every byte, report throughput.
    Demo {
        /// Worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Messages each worker sends.
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        /// Pool size in MiB.
        #[arg(long, default_value_t = 64)]
        pool_mib: u64,
    },
    /// One demo worker (started by `demo`).
    #[command(hide = true)]
    DemoWorker { pool: String, index: u64, messages: u64 },
}

/// Runs the tool with command line `args` (the program's name first): `this_command` is how to
/// start the tool again (the demo's workers are started so). Returns the exit status. A process
/// that is the tool restores SIGPIPE's default first, so that a reader that goes away
/// (`shmpool ls | head -1`) ends it quietly, as any Unix tool.
pub fn main(args: Vec<OsString>, this_command: Vec<OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return error.exit_code().clamp(0, 255) as u8;
        }
    };
    let options = PoolOptions { dir: cli.dir.clone(), any_owner: cli.any_owner, ..PoolOptions::default() };
    let result = match cli.command {
        Action::Ls => ls(&options),
        Action::Info { name } => info(&name, &options),
        Action::Check { name } => check(&name, &options),
        Action::Reclaim { name } => reclaim(&name, &options),
        Action::Repair { name, force } => repair(&name, force, &options),
        Action::Rm { name, force } => rm(&name, force, &options),
        Action::Gc => gc(&options),
        Action::Demo { workers, messages, pool_mib } => demo(&this_command, workers, messages, pool_mib),
        Action::DemoWorker { pool, index, messages } => demo_worker(&pool, index, messages),
    };
    match result {
        Ok(code) if code == ExitCode::SUCCESS => 0,
        Ok(_) => 1,
        Err(error) => {
            eprintln!("shmpool: {error}");
            1
        }
    }
}

type Outcome = Result<ExitCode, PoolError>;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn ls(options: &PoolOptions) -> Outcome {
    println!("{:<32} {:>12} {:>12} {:>10}  CREATOR", "NAME", "SIZE", "USED", "ALLOCS");
    for name in list_pools(&options.dir)? {
        match Pool::inspect_by_name_with(&name, options).and_then(|pool| Ok((pool.stats()?, pool))) {
            Ok((stats, pool)) => {
                let info = pool.info();
                let used = stats.data_bytes.saturating_sub(stats.free_bytes);
                println!(
                    "{name:<32} {:>12} {:>12} {:>10}  {} ({})",
                    mib(pool.size()),
                    mib(used),
                    stats.live_allocations,
                    info.creator_pid,
                    info.creator
                );
            }
            Err(error) => println!("{name:<32} unusable: {error}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info(name: &str, options: &PoolOptions) -> Outcome {
    let pool = Pool::inspect_by_name_with(name, options)?;
    let (stats, allocations) = pool.survey()?;
    let info = pool.info();
    println!("pool {name}: {}", pool.path().display());
    let metadata = pool.size() - stats.data_bytes;
    println!(
        "  size {} ({} of data, {} of metadata: {:.2}%), free {}",
        mib(pool.size()),
        mib(stats.data_bytes),
        mib(metadata),
        metadata as f64 * 100.0 / pool.size() as f64,
        mib(stats.free_bytes)
    );
    println!("  live allocations {} ({} bytes asked for)", stats.live_allocations, stats.live_bytes);
    println!("  largest free run {}, cached blocks {}", mib(stats.largest_free_run), stats.cached_blocks);
    println!(
        "  creator pid {} ({}) uid {}, created at {} (unix)",
        info.creator_pid, info.creator, info.creator_uid, info.created_at
    );
    let attached: Vec<String> =
        info.attached.iter().map(|process| format!("{} ({})", process.pid, process.liveness)).collect();
    println!("  attached: {}", attached.join(", "));
    if info.attached.iter().any(|process| process.liveness == Liveness::Elsewhere) {
        println!("  (processes in another PID namespace cannot be judged from here: never taken for dead)");
    }
    if !info.dead.is_empty() {
        println!("  dead, not yet reclaimed: {:?}", info.dead);
    }
    println!("  size classes (class: spans, blocks, live):");
    for (class, figures) in stats.classes.iter().enumerate().filter(|(_, c)| c.spans > 0) {
        let size = alloc_core::layout::CLASS_SIZES[class];
        println!(
            "    {size:>5} B: {} spans, {} blocks, {} live",
            figures.spans, figures.blocks, figures.live
        );
    }
    let mut owners: std::collections::BTreeMap<Option<u32>, (u64, u64)> = Default::default();
    for allocation in allocations {
        let entry = owners.entry(pool.pid_of(allocation.owner)).or_default();
        entry.0 += 1;
        entry.1 += allocation.size;
    }
    println!("  owners (pid: allocations, bytes):");
    for (owner, (count, bytes)) in owners {
        match owner {
            None => println!("    pool: {count}, {bytes}"),
            Some(pid) => {
                let alive =
                    info.attached.iter().find(|process| process.pid == pid).map(|process| process.liveness);
                let shown = alive.unwrap_or(Liveness::Dead);
                println!("    {pid} ({shown}): {count}, {bytes}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(name: &str, options: &PoolOptions) -> Outcome {
    let pool = Pool::attach_by_name_with(name, options)?;
    match pool.check() {
        Ok(stats) => {
            println!("{name}: ok ({} live allocations, {} bytes)", stats.live_allocations, stats.live_bytes);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("{name}: FAILED: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn reclaim(name: &str, options: &PoolOptions) -> Outcome {
    let pool = Pool::attach_by_name_with(name, options)?;
    let report = pool.reclaim_dead()?;
    let bytes: u64 = report.freed.iter().map(|(_, _, size)| size).sum();
    let done = report.reclaimed;
    println!(
        "{name}: {} dead processes: freed {} allocations ({bytes} bytes), returned {} cached blocks and runs, healed {} \
         blocks in transit, finished {} half-done claims/releases, gave back {} waiter slots{}",
        done.dead_processes,
        report.freed.len(),
        done.cached_blocks,
        done.orphan_blocks,
        done.pending,
        done.waiter_slots,
        if done.deferred > 0 { " (some work deferred: spans in use; run again)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

fn repair(name: &str, force: bool, options: &PoolOptions) -> Outcome {
    let pool = Pool::attach_by_name_with(name, options)?;
    let busy = pool.other_users_described();
    if !busy.is_empty() && !force {
        println!(
            "{name}: processes {} are attached and may be working on the pool; stop them or pass --force",
            busy.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    reclaim(name, options)?;
    let repaired = pool.repair()?;
    println!("{name}: {repaired:?}");
    check(name, options)
}

fn rm(name: &str, force: bool, options: &PoolOptions) -> Outcome {
    crate::name::validate(name)?;
    match Pool::attach_by_name_with(name, options) {
        Ok(pool) => {
            let users = pool.other_users_described();
            if !users.is_empty() {
                println!(
                    "{name}: warning: processes {} are attached; they get PoolDestroyed from now on",
                    users.join(", ")
                );
            }
            pool.destroy()?
        }
        Err(error @ (PoolError::NotAPool { .. } | PoolError::NotReady { .. })) if !force => {
            println!(
                "{name}: {error}; not removed (processes may still use the file): pass --force to remove it"
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(PoolError::NotAPool { .. } | PoolError::NotReady { .. }) => {
            std::fs::remove_file(crate::name::path_in(&options.dir, name))
                .map_err(|source| PoolError::Io { operation: "removing the pool's file", source })?;
            println!("{name}: not a valid pool; its file was removed");
            return Ok(ExitCode::SUCCESS);
        }
        Err(other) => return Err(other),
    }
    println!("{name}: destroyed");
    Ok(ExitCode::SUCCESS)
}

fn gc(options: &PoolOptions) -> Outcome {
    for name in list_pools(&options.dir)? {
        let Ok(pool) = Pool::attach_by_name_with(&name, options) else { continue };
        let info = pool.info();
        let users: Vec<Liveness> =
            info.other_users().map(|process| process.liveness).chain([info.creator]).collect();
        // A process that maps the file uses the pool, recorded or not (a fork child).
        if users.contains(&Liveness::Alive) || !pool.mapped_by_others().is_empty() {
            continue;
        }
        if users.contains(&Liveness::Elsewhere) {
            println!(
                "{name}: kept: used by a process in another PID namespace, which cannot be judged from here"
            );
            continue;
        }
        pool.destroy()?;
        println!("{name}: destroyed (creator {} and every attached process are gone)", info.creator_pid);
    }
    Ok(ExitCode::SUCCESS)
}

fn demo(this_command: &[OsString], workers: usize, messages: u64, pool_mib: u64) -> Outcome {
    let workers = workers.max(2);
    let name = format!("demo-{}", current_pid());
    let pool = Pool::create(&name, pool_mib << 20)?;
    let outcome = run_demo(this_command, &pool, workers, messages);
    let destroyed = pool.destroy();
    let code = outcome?;
    destroyed?;
    Ok(code)
}

fn run_demo(this_command: &[OsString], pool: &Pool, workers: usize, messages: u64) -> Outcome {
    let (exe, prefix) =
        this_command.split_first().ok_or(PoolError::InvalidArgument("no command to start workers"))?;
    let descriptor = to_hex(&pool.descriptor()?);
    println!(
        "demo: {workers} processes in a ring, {messages} allocations each (64 B - 64 KiB), pool {} ({})",
        pool.name(),
        mib(pool.size())
    );
    let io_error = |source| PoolError::Io { operation: "starting demo workers", source };
    let mut pipes = Vec::new();
    for _ in 0..workers {
        pipes.push(std::io::pipe().map_err(io_error)?);
    }
    let (readers, writers): (Vec<_>, Vec<_>) = pipes.into_iter().unzip();
    let mut writers: Vec<Option<_>> = writers.into_iter().map(Some).collect();
    let started = Instant::now();
    let mut children = Vec::new();
    for (index, reader) in readers.into_iter().enumerate() {
        let writer = writers[(index + 1) % workers].take().expect("each writer used once");
        let child = Command::new(exe)
            .args(prefix)
            .args(["demo-worker", &descriptor, &index.to_string(), &messages.to_string()])
            .stdin(Stdio::from(reader))
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error)?;
        children.push(child);
    }
    let (mut sent, mut verified, mut bytes, mut failures) = (0u64, 0u64, 0u64, 0u64);
    for mut child in children {
        let mut report = String::new();
        if let Some(stderr) = child.stderr.as_mut() {
            let _ = stderr.read_to_string(&mut report);
        }
        let status = child.wait().map_err(io_error)?;
        let mut parsed = false;
        for line in report.lines() {
            if let Some(fields) = line.strip_prefix("@@ ") {
                let values: Vec<u64> =
                    fields.split_whitespace().filter_map(|f| f.split('=').nth(1)?.parse().ok()).collect();
                if let [s, v, b, f] = values[..] {
                    (sent, verified, bytes, failures) = (sent + s, verified + v, bytes + b, failures + f);
                    parsed = true;
                }
            } else {
                eprintln!("worker: {line}");
            }
        }
        if !status.success() || !parsed {
            failures += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = pool.check();
    let clean = matches!(&stats, Ok(s) if s.live_allocations == 0);
    println!(
        "demo: {sent} allocations sent, {verified} received and verified ({}), in {elapsed:.2} s",
        mib(bytes)
    );
    println!(
        "demo: {:.0} allocations/s, {:.0} MiB/s verified across processes; pool check: {}",
        verified as f64 / elapsed,
        bytes as f64 / elapsed / (1 << 20) as f64,
        match &stats {
            Ok(s) => format!("ok, {} live allocations left", s.live_allocations),
            Err(error) => format!("FAILED: {error}"),
        }
    );
    if failures == 0 && verified == sent && sent == messages * workers as u64 && clean {
        println!("demo: PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("demo: FAIL ({failures} worker failures)");
        Ok(ExitCode::FAILURE)
    }
}

fn demo_worker(descriptor: &str, index: u64, messages: u64) -> Outcome {
    let bytes = from_hex(descriptor).ok_or(PoolError::InvalidDescriptor("not hex"))?;
    let pool = Pool::attach(&bytes)?;
    let receiver = {
        let pool = pool.clone();
        std::thread::spawn(move || receive(&pool))
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut rng = 0x2545_F491_4F6C_DD1D ^ (index + 1).wrapping_mul(0x9E37_79B9);
    let mut sent = 0;
    let mut failures = 0;
    for _ in 0..messages {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = 64u64 << (rng % 11); // 64 B .. 64 KiB
        let allocation = match pool.alloc(size) {
            Ok(allocation) => allocation,
            Err(PoolError::Full { .. }) => {
                // Descriptors still in our buffer pin memory the next worker cannot free yet.
                let _ = out.flush();
                pool.alloc_blocking(size, Some(Duration::from_secs(20)))?
            }
            Err(other) => return Err(other),
        };
        verify::fill(&pool, &allocation)?;
        // The receiver frees it; hand ownership over so a crash of ours would not reclaim it.
        let descriptor = pool.alloc_descriptor(&allocation)?;
        if write_frame(&mut out, &descriptor).is_err() {
            failures += 1;
            break;
        }
        sent += 1;
    }
    let _ = write_end(&mut out);
    drop(out);
    let (verified, bytes, receive_failures) = receiver.join().unwrap_or((0, 0, 1));
    eprintln!("@@ sent={sent} verified={verified} bytes={bytes} failures={}", failures + receive_failures);
    Ok(ExitCode::SUCCESS)
}

/// Reads descriptors from stdin until the end marker; verifies and frees each allocation.
fn receive(pool: &Pool) -> (u64, u64, u64) {
    let mut input = BufReader::new(std::io::stdin().lock());
    let (mut verified, mut bytes, mut failures) = (0, 0, 0);
    loop {
        let descriptor = match read_frame(&mut input) {
            Ok(Some(descriptor)) => descriptor,
            Ok(None) => break,
            Err(_) => {
                failures += 1;
                break;
            }
        };
        let ok = Pool::attach_alloc(&descriptor).and_then(|(sender_pool, allocation)| {
            debug_assert!(sender_pool == *pool);
            pool.adopt(allocation.id())?;
            let intact = verify::holds(pool, &allocation)?;
            pool.free(allocation.id())?;
            Ok((intact, allocation.size))
        });
        match ok {
            Ok((true, size)) => {
                verified += 1;
                bytes += size;
            }
            _ => failures += 1,
        }
    }
    (verified, bytes, failures)
}
