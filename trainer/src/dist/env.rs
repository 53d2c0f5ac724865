//! Which rank this process is, read from its launcher's environment:
//! torchrun's (and `trainer launch`'s) variables, else SLURM's.
//!
//! | what | torchrun, `trainer launch` | SLURM (`srun`) |
//! |---|---|---|
//! | rank | `RANK` | `SLURM_PROCID` |
//! | world size | `WORLD_SIZE` | `SLURM_STEP_NUM_TASKS` |
//! | rank on this node | `LOCAL_RANK` | `SLURM_LOCALID` |
//! | ranks on this node | `LOCAL_WORLD_SIZE` | `SLURM_STEP_TASKS_PER_NODE` (first entry) |
//! | store host | `MASTER_ADDR` (required) | `MASTER_ADDR`, else the step's first node |
//! | store port | `MASTER_PORT` | `MASTER_PORT`, else 29500 |
//!
//! SLURM's are read only inside an `srun` step (where
//! `SLURM_STEP_NUM_TASKS` is set), so that a process started directly by a
//! batch script is one process, as it is. With neither set, or a world of
//! one, there is nothing to read: one process, as without a launcher.

/// The port c10d's store listens on when none is given (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place among the ranks, and where they meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub local_world: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store already (`TORCHELASTIC_USE_AGENT_STORE`).
    pub join_store: bool,
    /// torchrun's restart count: keys of an earlier attempt are not reused.
    pub attempt: u32,
    /// Which launcher's variables these were.
    pub launcher: Launcher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
}

/// A variable that is set but makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{name}={value}: {why}")]
    Bad {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("{0} is set but {1} is not: a launcher sets both")]
    Missing(&'static str, &'static str),
    #[error("{rank_var}={rank} is not below {world_var}={world}")]
    RankOutOfRange {
        rank_var: &'static str,
        rank: usize,
        world_var: &'static str,
        world: usize,
    },
}

impl WorldEnv {
    /// From this process's environment.
    pub fn from_process() -> Result<Option<Self>, EnvError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From the variables `get` gives; None where none describes a rank
    /// (`world` 1 is a rank only where the launcher set MASTER_ADDR too).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, EnvError> {
        // A world of one is one process, unless a launcher set it up fully
        // (`trainer launch --nproc-per-node 1`: MASTER_ADDR too), which
        // lets `--dist-backend nccl|gloo` run one rank through the
        // data-parallel path.
        let world_of = |name| optional(&get, name).map(|w| w.unwrap_or(0));
        let alone = world_of("WORLD_SIZE")? == 1 || world_of("SLURM_STEP_NUM_TASKS")? == 1;
        if alone && get("MASTER_ADDR").is_none() {
            return Ok(None);
        }
        let env = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            Some(torchrun(&get)?)
        } else if get("SLURM_STEP_NUM_TASKS").is_some() && get("SLURM_PROCID").is_some() {
            Some(slurm(&get)?)
        } else {
            None
        };
        Ok(env)
    }
}

fn torchrun(get: &impl Fn(&str) -> Option<String>) -> Result<WorldEnv, EnvError> {
    let rank = required(get, "RANK", "WORLD_SIZE")?;
    let world = required(get, "WORLD_SIZE", "RANK")?;
    let local_rank = optional(get, "LOCAL_RANK")?.unwrap_or(rank);
    let local_world = optional(get, "LOCAL_WORLD_SIZE")?.unwrap_or(world);
    let env = WorldEnv {
        rank,
        world,
        local_rank,
        local_world,
        master_addr: get("MASTER_ADDR").ok_or(EnvError::Missing("WORLD_SIZE", "MASTER_ADDR"))?,
        master_port: port(get)?,
        join_store: get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True"),
        attempt: optional(get, "TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u32,
        launcher: Launcher::Torchrun,
    };
    check(
        env,
        ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"],
    )
}

fn slurm(get: &impl Fn(&str) -> Option<String>) -> Result<WorldEnv, EnvError> {
    let rank = required(get, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")?;
    let world = required(get, "SLURM_STEP_NUM_TASKS", "SLURM_PROCID")?;
    let local_rank = optional(get, "SLURM_LOCALID")?.unwrap_or(0);
    let local_world = match get("SLURM_STEP_TASKS_PER_NODE") {
        Some(v) => first_count(&v).ok_or_else(|| EnvError::Bad {
            name: "SLURM_STEP_TASKS_PER_NODE",
            value: v.clone(),
            why: "expected counts such as `8(x4),4`".into(),
        })?,
        None => 1,
    };
    let master_addr = match get("MASTER_ADDR") {
        Some(addr) => addr,
        None => {
            let (name, list) = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"]
                .into_iter()
                .find_map(|n| get(n).map(|v| (n, v)))
                .ok_or(EnvError::Missing(
                    "SLURM_PROCID",
                    "MASTER_ADDR or SLURM_STEP_NODELIST",
                ))?;
            first_host(&list).ok_or_else(|| EnvError::Bad {
                name,
                value: list.clone(),
                why: "no host name in it".into(),
            })?
        }
    };
    let env = WorldEnv {
        rank,
        world,
        local_rank,
        local_world,
        master_addr,
        master_port: port(get)?,
        join_store: false,
        attempt: optional(get, "SLURM_RESTART_COUNT")?.unwrap_or(0) as u32,
        launcher: Launcher::Slurm,
    };
    check(
        env,
        [
            "SLURM_PROCID",
            "SLURM_STEP_NUM_TASKS",
            "SLURM_LOCALID",
            "SLURM_STEP_TASKS_PER_NODE",
        ],
    )
}

/// Ranks below their worlds, and a world of at least one.
fn check(
    env: WorldEnv,
    [rank, world, local_rank, local_world]: [&'static str; 4],
) -> Result<WorldEnv, EnvError> {
    for (r, rv, w, wv) in [
        (env.rank, rank, env.world, world),
        (env.local_rank, local_rank, env.local_world, local_world),
    ] {
        if r >= w {
            return Err(EnvError::RankOutOfRange {
                rank_var: rv,
                rank: r,
                world_var: wv,
                world: w,
            });
        }
    }
    Ok(env)
}

fn parse(name: &'static str, value: String) -> Result<usize, EnvError> {
    value.trim().parse().map_err(|_| EnvError::Bad {
        name,
        value,
        why: "not a whole number".into(),
    })
}

fn required(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    partner: &'static str,
) -> Result<usize, EnvError> {
    let value = get(name).ok_or(EnvError::Missing(partner, name))?;
    parse(name, value)
}

fn optional(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<usize>, EnvError> {
    get(name).map(|v| parse(name, v)).transpose()
}

fn port(get: &impl Fn(&str) -> Option<String>) -> Result<u16, EnvError> {
    match get("MASTER_PORT") {
        None => Ok(DEFAULT_PORT),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(EnvError::Bad {
                name: "MASTER_PORT",
                value: v,
                why: "not a port (1-65535)".into(),
            }),
        },
    }
}

/// The first count of SLURM's tasks-per-node form: `8(x4),4` -> 8.
fn first_count(text: &str) -> Option<usize> {
    let head = text.split([',', '(']).next()?;
    head.trim().parse().ok()
}

/// The first host of a SLURM node list: `gpu[07-09,12],cpu1` -> `gpu07`.
fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let (prefix, rest) = match list.find(['[', ',']) {
        Some(at) if list.as_bytes()[at] == b'[' => (&list[..at], &list[at + 1..]),
        Some(at) => return Some(list[..at].to_string()).filter(|h| !h.is_empty()),
        None => return Some(list.to_string()).filter(|h| !h.is_empty()),
    };
    let first = rest.split([',', '-', ']']).next()?;
    (!prefix.is_empty() || !first.is_empty()).then(|| format!("{prefix}{first}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Option<WorldEnv>, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WorldEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn torchruns_variables() {
        let got = env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "node3"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            WorldEnv {
                rank: 5,
                world: 16,
                local_rank: 1,
                local_world: 4,
                master_addr: "node3".into(),
                master_port: 29400,
                join_store: true,
                attempt: 2,
                launcher: Launcher::Torchrun,
            }
        );
    }

    #[test]
    fn none_or_a_world_of_one_is_one_process() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        let launched = env(&[("RANK", "0"), ("WORLD_SIZE", "1"), ADDR]).unwrap();
        assert_eq!(launched.map(|e| e.world), Some(1));
        // A batch script's own shell: SLURM's job variables, no step.
        assert_eq!(
            env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")]).unwrap(),
            None
        );
    }

    #[test]
    fn slurms_variables_inside_a_step() {
        let got = env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_STEP_NUM_TASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_TASKS_PER_NODE", "8(x2)"),
            ("SLURM_STEP_NODELIST", "gpu[07-08]"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (got.rank, got.world, got.local_rank, got.local_world),
            (9, 16, 1, 8)
        );
        assert_eq!(
            (got.master_addr.as_str(), got.master_port),
            ("gpu07", DEFAULT_PORT)
        );
        assert_eq!(got.launcher, Launcher::Slurm);
    }

    #[test]
    fn first_hosts_of_node_lists() {
        assert_eq!(first_host("gpu[07-09,12],cpu1").as_deref(), Some("gpu07"));
        assert_eq!(first_host("n[3,5]").as_deref(), Some("n3"));
        assert_eq!(first_host("alpha,beta").as_deref(), Some("alpha"));
        assert_eq!(first_host("solo").as_deref(), Some("solo"));
        assert_eq!(first_host(""), None);
        assert_eq!(first_count("8(x4),4"), Some(8));
        assert_eq!(first_count("2"), Some(2));
    }

    const ADDR: (&str, &str) = ("MASTER_ADDR", "127.0.0.1");

    /// Each nonsense value names its variable.
    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "x"), ("WORLD_SIZE", "2"), ADDR], "RANK=x"),
            (
                &[("RANK", "2"), ("WORLD_SIZE", "2"), ADDR],
                "RANK=2 is not below WORLD_SIZE=2",
            ),
            (&[("WORLD_SIZE", "2"), ADDR], "RANK"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2")],
                "WORLD_SIZE is set but MASTER_ADDR is not",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("LOCAL_RANK", "3"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ADDR,
                ],
                "LOCAL_RANK=3",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_PORT", "70000"),
                    ADDR,
                ],
                "MASTER_PORT=70000",
            ),
        ];
        for (vars, want) in cases {
            let err = env(vars).unwrap_err().to_string();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
    }
}
