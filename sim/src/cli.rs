//! `agentd sim ...`: run, sweep, replay, check-determinism, bugs.
//!
//! Exit codes: 0 pass, 1 safety violation, 2 liveness violation,
//! 3 nondeterminism (or a replay that diverged), 4 usage or setup error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use crate::faults::parse_faults;
use crate::harness::{fault_names, run, Bug, Outcome, SimOptions, SimReport, TRACE_TAIL};

const EXIT_NONDETERMINISM: u8 = 3;
const EXIT_USAGE: u8 = 4;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run one seed: the cluster under its fault plan, then every checker.
    Run {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        shape: ShapeArgs,
        /// Write the run's trace to FILE (for `sim replay` and diffing).
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// Print only the one-line result.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a range of seeds (`A..B` excludes B, `A..=B` includes it).
    Sweep {
        #[arg(long, value_name = "A..B")]
        seeds: String,
        /// Stop starting new seeds after this many seconds of wall time.
        #[arg(long, value_name = "SECONDS")]
        time_budget: Option<u64>,
        #[command(flatten)]
        shape: ShapeArgs,
    },
    /// Run a seed again and compare its trace with FILE, byte for byte.
    Replay {
        #[arg(long)]
        seed: u64,
        #[arg(long, value_name = "FILE")]
        trace: PathBuf,
        #[command(flatten)]
        shape: ShapeArgs,
    },
    /// Run a seed in two separate processes and compare their traces.
    CheckDeterminism {
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        shape: ShapeArgs,
    },
    /// List the planted bugs, one name a line.
    Bugs,
}

/// The run's shape; everything else comes from the seed.
#[derive(Debug, Clone, Args)]
pub struct ShapeArgs {
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Fault kinds: `default` (all of them), `all`, `none`, or a comma list (crash, wipe,
    /// power-loss, partition, one-way, isolate, delay, loss, duplicate, disk,
    /// clock, leader-transfer, snapshot, membership, duplicate-wake,
    /// sandbox-crash).
    #[arg(long, default_value = "default")]
    faults: String,
    /// Length of the safety phase in 1 ms simulation steps.
    #[arg(long, default_value_t = 20_000)]
    steps: u64,
    /// Simulated seconds the cluster has to converge after faults stop.
    #[arg(long, default_value_t = 60)]
    liveness_secs: u64,
    #[arg(long, default_value_t = 3)]
    clients: u64,
    /// Appends per client.
    #[arg(long, default_value_t = 40)]
    appends: usize,
    #[arg(long, default_value_t = 3)]
    agent_sessions: usize,
    /// Plant a bug (see `agentd sim bugs`); its faults are added to the run.
    #[arg(long)]
    bug: Option<String>,
}

impl ShapeArgs {
    fn options(&self, seed: u64) -> Result<SimOptions, String> {
        if self.nodes == 0 || self.nodes > 7 {
            return Err("--nodes must be 1 to 7".into());
        }
        if self.shards == 0 || self.shards > 64 {
            return Err("--shards must be 1 to 64".into());
        }
        let mut faults = parse_faults(&self.faults)?;
        let bug = match &self.bug {
            Some(name) => Some(Bug::parse(name).ok_or_else(|| {
                let names: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
                format!("unknown bug {name:?}; planted bugs: {}", names.join(", "))
            })?),
            None => None,
        };
        if let Some(bug) = bug {
            faults.extend(bug.faults());
        }
        Ok(SimOptions {
            seed,
            nodes: self.nodes,
            shards: self.shards,
            faults,
            safety: Duration::from_millis(self.steps),
            liveness: Duration::from_secs(self.liveness_secs),
            clients: self.clients,
            appends_per_client: self.appends,
            agent_sessions: self.agent_sessions,
            bug,
        })
    }
}

/// Runs `agentd sim ...` (outside any tokio runtime: turmoil makes its own).
pub fn main(command: SimCommand) -> ExitCode {
    match command {
        SimCommand::Bugs => {
            for bug in Bug::ALL {
                outln!("{}", bug.name());
            }
            ExitCode::SUCCESS
        }
        SimCommand::Run { seed, shape, trace, quiet } => {
            let Some(options) = options_or_exit(&shape, seed) else { return ExitCode::from(EXIT_USAGE) };
            let report = match run_or_report(options) {
                Ok(report) => report,
                Err(code) => return code,
            };
            if let Some(path) = trace {
                if let Err(error) = std::fs::write(&path, report.trace_text()) {
                    eprintln!("agentd sim: cannot write the trace to {}: {error}", path.display());
                    return ExitCode::from(EXIT_USAGE);
                }
            }
            if quiet {
                outln!("{}", summary_line(&report));
            } else {
                print_report(&report);
            }
            ExitCode::from(report.outcome.exit_code() as u8)
        }
        SimCommand::Sweep { seeds, time_budget, shape } => sweep(&seeds, time_budget, &shape),
        SimCommand::Replay { seed, trace, shape } => replay(seed, &trace, &shape),
        SimCommand::CheckDeterminism { seed, shape } => check_determinism(seed, &shape),
    }
}

fn options_or_exit(shape: &ShapeArgs, seed: u64) -> Option<SimOptions> {
    match shape.options(seed) {
        Ok(options) => Some(options),
        Err(error) => {
            eprintln!("agentd sim: {error}");
            None
        }
    }
}

fn run_or_report(options: SimOptions) -> Result<SimReport, ExitCode> {
    let seed = options.seed;
    let command = options.command();
    run(options).map_err(|error| {
        eprintln!("agentd sim: seed {seed}: the simulation could not run: {error:#}");
        eprintln!("reproduce: {command}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn summary_line(report: &SimReport) -> String {
    let verdict = match report.outcome {
        Outcome::Pass => "pass",
        Outcome::SafetyViolation => "SAFETY VIOLATION",
        Outcome::LivenessViolation => "LIVENESS VIOLATION",
    };
    format!(
        "seed {}: {verdict} ({} faults, {} acknowledged events, {} tool calls; {:.1}s simulated in {:.1}s, {:.1}x)",
        report.options.seed,
        report.faults_applied,
        report.acknowledged,
        report.tool_calls,
        report.simulated.as_secs_f64(),
        report.wall.as_secs_f64(),
        ratio(report.simulated, report.wall)
    )
}

fn ratio(simulated: Duration, wall: Duration) -> f64 {
    simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

fn print_report(report: &SimReport) {
    let options = &report.options;
    outln!("{}", summary_line(report));
    outln!(
        "configuration: {} nodes, {} shards, faults {}, safety phase {:?}, liveness bound {:?}, {} clients x {} appends, {} agent sessions{}",
        options.nodes,
        options.shards,
        fault_names(&options.faults),
        options.safety,
        options.liveness,
        options.clients,
        options.appends_per_client,
        options.agent_sessions,
        options.bug.map(|bug| format!(", planted bug {} ({})", bug.name(), bug.description())).unwrap_or_default()
    );
    if report.outcome == Outcome::Pass {
        return;
    }
    outln!("violated invariants:");
    for violation in report.violations.iter().take(20) {
        outln!("  {violation}");
    }
    if report.violations.len() > 20 {
        outln!("  ... and {} more", report.violations.len() - 20);
    }
    outln!("last {TRACE_TAIL} trace events:");
    let start = report.trace.len().saturating_sub(TRACE_TAIL);
    for line in &report.trace[start..] {
        outln!("  {line}");
    }
    outln!("reproduce: {}", options.command());
}

fn parse_seeds(text: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
    let bad = || format!("--seeds {text:?}: expected A..B or A..=B");
    if let Some((start, end)) = text.split_once("..=") {
        let start: u64 = start.trim().parse().map_err(|_| bad())?;
        let end: u64 = end.trim().parse().map_err(|_| bad())?;
        return Ok(start..=end);
    }
    let (start, end) = text.split_once("..").ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end <= start {
        return Err(format!("--seeds {text:?} is empty"));
    }
    Ok(start..=end - 1)
}

fn sweep(seeds: &str, time_budget: Option<u64>, shape: &ShapeArgs) -> ExitCode {
    let seeds = match parse_seeds(seeds) {
        Ok(seeds) => seeds,
        Err(error) => {
            eprintln!("agentd sim: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    #[allow(clippy::disallowed_methods, reason = "a sweep's time budget is wall time, outside every simulated run")]
    let started = Instant::now();
    let budget = time_budget.map(Duration::from_secs);
    let (mut runs, mut failures, mut simulated, mut wall) = (0u64, Vec::new(), Duration::ZERO, Duration::ZERO);
    let mut worst = 0u8;
    let total = seeds.end() - seeds.start() + 1;
    for seed in seeds {
        if budget.is_some_and(|budget| started.elapsed() >= budget) {
            outln!("time budget spent: stopping after {runs} of {total} seeds");
            break;
        }
        let Some(options) = options_or_exit(shape, seed) else { return ExitCode::from(EXIT_USAGE) };
        let report = match run_or_report(options) {
            Ok(report) => report,
            Err(code) => return code,
        };
        runs += 1;
        simulated += report.simulated;
        wall += report.wall;
        outln!("{}", summary_line(&report));
        if report.outcome != Outcome::Pass {
            print_report(&report);
            worst = worst.max(report.outcome.exit_code() as u8);
            failures.push(seed);
        }
    }
    let faults = shape.options(0).map(|options| fault_names(&options.faults)).unwrap_or_default();
    outln!(
        "sweep: {runs} seeds, {} failed{}; faults {faults}; {:.0}s simulated in {:.0}s of runs ({:.1}x)",
        failures.len(),
        if failures.is_empty() { String::new() } else { format!(" (seeds {failures:?})") },
        simulated.as_secs_f64(),
        wall.as_secs_f64(),
        ratio(simulated, wall)
    );
    ExitCode::from(worst)
}

/// The first line where two traces differ, for the report.
fn first_difference(expected: &str, actual: &str) -> Option<(usize, String, String)> {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    let mut number = 0;
    loop {
        number += 1;
        match (expected_lines.next(), actual_lines.next()) {
            (None, None) => return None,
            (left, right) if left == right => continue,
            (left, right) => {
                let show = |line: Option<&str>| line.map(str::to_string).unwrap_or_else(|| "(end of trace)".into());
                return Some((number, show(left), show(right)));
            }
        }
    }
}

fn replay(seed: u64, trace: &Path, shape: &ShapeArgs) -> ExitCode {
    let expected = match std::fs::read_to_string(trace) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("agentd sim: cannot read {}: {error}", trace.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Some(options) = options_or_exit(shape, seed) else { return ExitCode::from(EXIT_USAGE) };
    let report = match run_or_report(options) {
        Ok(report) => report,
        Err(code) => return code,
    };
    let actual = report.trace_text();
    match first_difference(&expected, &actual) {
        None => {
            outln!("seed {seed}: replayed {} trace lines identically", report.trace.len());
            print_report(&report);
            ExitCode::from(report.outcome.exit_code() as u8)
        }
        Some((line, expected, actual)) => {
            outln!("seed {seed}: the replay diverged from {} at line {line}:", trace.display());
            outln!("  recorded: {expected}");
            outln!("  replayed: {actual}");
            outln!("reproduce: {}", report.options.command());
            ExitCode::from(EXIT_NONDETERMINISM)
        }
    }
}

fn check_determinism(seed: u64, shape: &ShapeArgs) -> ExitCode {
    let Some(options) = options_or_exit(shape, seed) else { return ExitCode::from(EXIT_USAGE) };
    let executable = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!("agentd sim: cannot find this program's executable: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let directory = std::env::temp_dir().join(format!("agentd-sim-determinism-{}-{seed}", std::process::id()));
    if let Err(error) = std::fs::create_dir_all(&directory) {
        eprintln!("agentd sim: cannot create {}: {error}", directory.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let mut traces = Vec::new();
    for attempt in 1..=2 {
        let path = directory.join(format!("trace-{attempt}.txt"));
        let mut arguments: Vec<String> = vec!["sim".into(), "run".into(), "--quiet".into()];
        arguments.extend(options.command().split_whitespace().skip(3).map(str::to_string));
        arguments.push("--trace".into());
        arguments.push(path.display().to_string());
        outln!("process {attempt}: {} {}", executable.display(), arguments.join(" "));
        let status = std::process::Command::new(&executable).args(&arguments).status();
        match status {
            Ok(status) if status.code().is_some_and(|code| code <= 2) => {}
            Ok(status) => {
                eprintln!("agentd sim: process {attempt} failed: {status}");
                return ExitCode::from(EXIT_USAGE);
            }
            Err(error) => {
                eprintln!("agentd sim: cannot start process {attempt}: {error}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => traces.push(text),
            Err(error) => {
                eprintln!("agentd sim: cannot read {}: {error}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&directory);
    match first_difference(&traces[0], &traces[1]) {
        None => {
            outln!(
                "seed {seed}: deterministic: two processes wrote the same {} bytes of trace ({} lines)",
                traces[0].len(),
                traces[0].lines().count()
            );
            ExitCode::SUCCESS
        }
        Some((line, first, second)) => {
            outln!("seed {seed}: NONDETERMINISM: the traces differ at line {line}:");
            outln!("  process 1: {first}");
            outln!("  process 2: {second}");
            outln!("reproduce: agentd sim check-determinism --seed {seed}");
            ExitCode::from(EXIT_NONDETERMINISM)
        }
    }
}

/// What `outln!` calls: a line to stdout, and a quiet exit once nobody reads it.
pub fn write_stdout_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("agentd sim: cannot write to stdout: {error}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse() {
        assert_eq!(parse_seeds("1..4"), Ok(1..=3));
        assert_eq!(parse_seeds("1..=4"), Ok(1..=4));
        assert!(parse_seeds("4..4").is_err());
        assert!(parse_seeds("x..4").is_err());
    }

    #[test]
    fn the_first_difference_is_found() {
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        assert_eq!(first_difference("a\nb\n", "a\nc\n"), Some((2, "b".into(), "c".into())));
        assert_eq!(first_difference("a\n", "a\nc\n"), Some((2, "(end of trace)".into(), "c".into())));
    }
}
