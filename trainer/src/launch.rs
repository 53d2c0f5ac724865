//! `trainer launch`: starts this node's ranks of a data-parallel run, as
//! torchrun does, without Python.
//!
//! Each child is the trainer itself with the given arguments and
//! torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), which `dist::env`
//! reads. Their output comes back line by line, prefixed with the rank.
//!
//! - Ctrl-C is forwarded to every rank once per press: the first makes
//!   each rank checkpoint after the step the ranks agree on, a second
//!   stops them at once. The children run in their own process group, so
//!   that the terminal's SIGINT reaches them only through us, once.
//! - When a rank fails, the others are stopped (they would wait in the next
//!   collective until its timeout), and the error names the rank.
//! - A child dies with the launcher (PR_SET_PDEATHSIG): no orphans that
//!   hold GPUs.
//! - Unless OMP_NUM_THREADS is set, each rank gets the node's cores / N
//!   OpenMP threads.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How this node's ranks are started.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The program each rank runs (the trainer itself).
    pub program: PathBuf,
    /// Its arguments (`run ...` or `eval ...`).
    pub args: Vec<OsString>,
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// None: a free port on this machine (one node only).
    pub master_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Bad(String),
    #[error("starting rank {rank} ({program}): {source}")]
    Spawn {
        rank: usize,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rank {rank} {how}; the other ranks were stopped")]
    RankFailed { rank: usize, how: String, code: i32 },
    #[error("interrupted: every rank stopped after Ctrl-C")]
    Interrupted,
    #[error("finding a free port for the ranks' store: {0}")]
    Port(#[source] std::io::Error),
}

impl LaunchError {
    /// The exit code the launcher should end with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::RankFailed { code, .. } => *code,
            Self::Interrupted => 130,
            _ => 2,
        }
    }
}

/// One started rank and the threads that copy its output.
struct Rank {
    rank: usize,
    child: Child,
    pipes: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// How long stopped ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Starts the ranks and waits for them. `interrupts` counts Ctrl-C presses
/// (the binary's handler raises it); each new one is forwarded.
pub fn launch(opts: &LaunchOptions, interrupts: &AtomicUsize) -> Result<(), LaunchError> {
    let world = check(opts)?;
    let port = match opts.master_port {
        Some(p) => p,
        None => free_port().map_err(LaunchError::Port)?,
    };
    let mut ranks = Vec::with_capacity(opts.nproc_per_node);
    for local in 0..opts.nproc_per_node {
        match start(opts, world, port, local) {
            Ok(r) => ranks.push(r),
            Err(e) => {
                stop_all(&mut ranks);
                return Err(e);
            }
        }
    }
    let result = supervise(&mut ranks, interrupts);
    if result.is_err() {
        stop_all(&mut ranks);
    }
    for r in &mut ranks {
        for p in r.pipes.drain(..) {
            let _ = p.join();
        }
    }
    result
}

fn check(opts: &LaunchOptions) -> Result<usize, LaunchError> {
    if opts.nproc_per_node == 0 || opts.nnodes == 0 {
        return Err(LaunchError::Bad(
            "--nproc-per-node and --nnodes must be at least 1".into(),
        ));
    }
    if opts.node_rank >= opts.nnodes {
        return Err(LaunchError::Bad(format!(
            "--node-rank {} is not below --nnodes {}",
            opts.node_rank, opts.nnodes
        )));
    }
    if opts.nnodes > 1 && opts.master_port.is_none() {
        return Err(LaunchError::Bad(
            "with --nnodes above 1, give every node the same --master-addr and --master-port"
                .into(),
        ));
    }
    if opts.args.is_empty() {
        return Err(LaunchError::Bad(
            "nothing to launch: give the trainer's command after `--`, e.g. `trainer launch --nproc-per-node 2 -- run --shards shards`".into(),
        ));
    }
    Ok(opts.nproc_per_node * opts.nnodes)
}

/// A port the OS says is free now on this machine.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(opts: &LaunchOptions, world: usize, port: u16, local: usize) -> Result<Rank, LaunchError> {
    let rank = opts.node_rank * opts.nproc_per_node + local;
    let mut command = Command::new(&opts.program);
    command
        .args(&opts.args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", local.to_string())
        .env("LOCAL_WORLD_SIZE", opts.nproc_per_node.to_string())
        .env("GROUP_RANK", opts.node_rank.to_string())
        .env("MASTER_ADDR", &opts.master_addr)
        .env("MASTER_PORT", port.to_string())
        .envs(omp_threads(opts.nproc_per_node))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
        rank,
        program: opts.program.clone(),
        source,
    })?;
    let mut pipes = Vec::new();
    if let Some(out) = child.stdout.take() {
        pipes.push(copy_lines(out, rank, false));
    }
    if let Some(err) = child.stderr.take() {
        pipes.push(copy_lines(err, rank, true));
    }
    Ok(Rank {
        rank,
        child,
        pipes,
        status: None,
    })
}

/// OpenMP threads for each rank's libtorch CPU work, unless the user set
/// OMP_NUM_THREADS: the cores shared among the node's ranks (torchrun sets
/// 1), so that N ranks do not each start a thread per core.
fn omp_threads(nproc: usize) -> Option<(&'static str, String)> {
    if std::env::var_os("OMP_NUM_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(("OMP_NUM_THREADS", (cores / nproc).max(1).to_string()))
}

/// Copies `from` line by line to our stdout (or stderr), each line
/// prefixed with `[rank N]`.
fn copy_lines(from: impl Read + Send + 'static, rank: usize, to_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        let prefix = format!("[rank {rank}] ");
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let mut text = prefix.clone().into_bytes();
                    text.extend_from_slice(&line);
                    // One write per line keeps ranks' lines whole.
                    let _ = if to_stderr {
                        std::io::stderr().lock().write_all(&text)
                    } else {
                        std::io::stdout().lock().write_all(&text)
                    };
                }
            }
        }
    })
}

/// Waits until every rank has exited (Ok when all succeeded), or one has
/// failed (the error names it), forwarding each new Ctrl-C.
fn supervise(ranks: &mut [Rank], interrupts: &AtomicUsize) -> Result<(), LaunchError> {
    let mut forwarded = 0;
    loop {
        let pressed = interrupts.load(Ordering::SeqCst);
        while forwarded < pressed {
            signal(ranks, libc::SIGINT);
            forwarded += 1;
        }
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.status = Some(status);
                // After Ctrl-C a rank ends with 130 once it has stopped;
                // the others are left to finish (rank 0 checkpoints).
                let stopped = forwarded > 0 && status.code() == Some(130);
                if !status.success() && !stopped {
                    return Err(failure(r.rank, status));
                }
            }
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            let interrupted = ranks
                .iter()
                .any(|r| r.status.and_then(|s| s.code()) == Some(130));
            return match interrupted {
                false => Ok(()),
                true => Err(LaunchError::Interrupted),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn failure(rank: usize, status: ExitStatus) -> LaunchError {
    let (how, code) = match (status.code(), status.signal()) {
        (Some(c), _) => (format!("exited with status {c}"), c),
        (None, Some(s)) => (format!("was killed by signal {s}"), 128 + s),
        _ => ("ended".to_string(), 1),
    };
    LaunchError::RankFailed { rank, how, code }
}

fn signal(ranks: &[Rank], sig: i32) {
    for r in ranks.iter().filter(|r| r.status.is_none()) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(r.child.id() as i32, sig);
        }
    }
}

/// SIGTERM to the ranks still running, SIGKILL to those left after GRACE.
fn stop_all(ranks: &mut [Rank]) {
    signal(ranks, libc::SIGTERM);
    let deadline = Instant::now() + GRACE;
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        loop {
            if let Ok(Some(status)) = r.child.try_wait() {
                r.status = Some(status);
                break;
            }
            if Instant::now() >= deadline {
                let _ = r.child.kill();
                r.status = r.child.wait().ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, nproc: usize) -> LaunchOptions {
        LaunchOptions {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            nproc_per_node: nproc,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: None,
        }
    }

    /// Every rank sees its own variables, and a clean exit of all is Ok.
    #[test]
    fn ranks_get_torchruns_variables() {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT > {}/$RANK",
            dir.path().display()
        );
        launch(&sh(&script, 3), &AtomicUsize::new(0)).expect("launch");
        let mut ports = Vec::new();
        for rank in 0..3 {
            let text = std::fs::read_to_string(dir.path().join(rank.to_string())).unwrap();
            let f: Vec<String> = text.split_whitespace().map(String::from).collect();
            let r = rank.to_string();
            assert_eq!(f[..5], [r.as_str(), "3", r.as_str(), "3", "127.0.0.1"]);
            ports.push(f[5].clone());
        }
        assert!(
            ports.iter().all(|p| *p == ports[0]),
            "one port for all: {ports:?}"
        );
    }

    /// A failing rank is named with its status, and the others (which
    /// would otherwise run for a minute) are stopped at once.
    #[test]
    fn a_failing_rank_is_named_and_the_others_stopped() {
        let started = Instant::now();
        let err = launch(
            &sh("if [ $RANK = 1 ]; then exit 3; fi; exec sleep 60", 3),
            &AtomicUsize::new(0),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::RankFailed {
                    rank: 1,
                    code: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "rank 1 exited with status 3; the other ranks were stopped"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn nonsense_is_refused() {
        let mut o = sh("true", 0);
        assert!(launch(&o, &AtomicUsize::new(0)).is_err());
        o.nproc_per_node = 1;
        o.args.clear();
        let err = launch(&o, &AtomicUsize::new(0)).unwrap_err().to_string();
        assert!(err.contains("after `--`"), "{err}");
    }
}
