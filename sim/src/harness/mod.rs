//! `agentd sim`: the real node code (openraft, ractor actors, quinn and
//! rustls over a simulated socket, the brain, the state machine) run as a
//! cluster of turmoil hosts in one process, under a seeded plan of faults,
//! then checked against every invariant of the design.
//!
//! A run has three phases:
//! 1. formation: the nodes start (n1 initialises, the others join) until
//!    every shard has a leader; no faults;
//! 2. safety: the workload runs (clients appending, agents calling tools)
//!    while the fault plan is applied;
//! 3. liveness: every fault is undone and stopped; the cluster must
//!    converge and every client and agent session finish within a bound.
//!
//! Then the checkers run over the history and the replicas' final state.
//! One seed derives everything (see `crate::faults::stream`), so a seed
//! replays exactly, and the trace of a run is the same bytes in every
//! process (`agentd sim check-determinism`).
//!
//! Files: `host.rs` is one boot of a node host; `runner.rs` applies faults;
//! `observe.rs` reads the cluster from outside; `workload.rs` is the clients;
//! `options.rs` what a run is asked and what it reports.

mod host;
mod observe;
mod options;
mod runner;
mod workload;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_raft::store::memory_disk::DiskFaults;

pub use options::{fault_names, Bug, Outcome, SimOptions, SimReport};

use crate::checkers::{self, Invariant, Violation};
use crate::faults::{plan, stream_seed, PlanShape};
use crate::world::net::node_ip;
use crate::world::World;
use host::run_node;
use observe::{converged, describe_session, group_report, record_placements, scan_replicas};
use runner::Runner;

/// How long formation may take before the run counts as a liveness failure.
const FORMATION_BOUND: Duration = Duration::from_secs(120);
/// How many trace lines a failure report shows.
pub const TRACE_TAIL: usize = 40;
/// How often the liveness phase re-proposes shard placements that differ
/// from the formed cluster's.
const PLACEMENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Reports a panic on the simulated path (a node's, or the harness's) as a
/// safety violation and ends the process with exit code 1. A panic cannot
/// be unwound safely through the simulated hosts' runtimes, so the run stops
/// here; the report still names the seed and the command that reproduces it.
fn report_panic(world: &World, options: &SimOptions, info: &std::panic::PanicHookInfo<'_>) {
    let location = info.location().map(|location| format!(" at {location}")).unwrap_or_default();
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    outln!("seed {}: SAFETY VIOLATION (a panic on the simulated path)", options.seed);
    outln!("violated invariants:");
    outln!("  {}: {message}{location}", Invariant::NoPanic.name());
    if let Some(trace) = world.try_trace() {
        outln!("last {TRACE_TAIL} trace events:");
        for line in &trace[trace.len().saturating_sub(TRACE_TAIL)..] {
            outln!("  {line}");
        }
    }
    outln!("reproduce: {}", options.command());
}

/// Runs one simulation.
pub fn run(options: SimOptions) -> anyhow::Result<SimReport> {
    let world = Arc::new(World::new(options.clone())?);
    let previous_hook = std::panic::take_hook();
    let (hook_world, hook_options) = (world.clone(), options.clone());
    std::panic::set_hook(Box::new(move |info| {
        report_panic(&hook_world, &hook_options, info);
        std::process::exit(Outcome::SafetyViolation.exit_code());
    }));
    let report = run_world(options, world);
    let _ = std::panic::take_hook();
    std::panic::set_hook(previous_hook);
    report
}

fn run_world(options: SimOptions, world: Arc<World>) -> anyhow::Result<SimReport> {
    #[allow(clippy::disallowed_methods, reason = "the wall time of a run is reported, never simulated")]
    let started = Instant::now();
    let sim = turmoil::Builder::new()
        .rng_seed(stream_seed(options.seed, "turmoil"))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(2))
        .udp_capacity(4096)
        .build();
    let mut runner = Runner::new(sim, world.clone());
    for node in 1..=options.nodes {
        let host_world = world.clone();
        runner.sim.host(Runner::host_name(node), move || run_node(host_world.clone(), node));
        anyhow::ensure!(
            runner.sim.lookup(Runner::host_name(node)) == node_ip(node),
            "turmoil gave n{node} an unexpected address"
        );
    }
    let mut violations = Vec::new();
    let mut faults_applied = 0;
    if let Some(violation) = formation(&mut runner, &options)? {
        violations.push(violation);
    } else {
        record_placements(&world);
        faults_applied = safety(&mut runner, &options)?;
        violations.extend(liveness(&mut runner, &options)?);
    }
    violations.extend(final_checks(&world, violations.is_empty()));
    let outcome = if violations.iter().any(|violation| !violation.invariant.is_liveness()) {
        Outcome::SafetyViolation
    } else if violations.is_empty() {
        Outcome::Pass
    } else {
        Outcome::LivenessViolation
    };
    let simulated = runner.sim.elapsed();
    runner.trace(format!("end: {outcome:?}, {} violations", violations.len()));
    let (tool_calls, _) = world.ledger.counts();
    let record = world.record();
    Ok(SimReport {
        options,
        outcome,
        violations,
        trace: record.trace.clone(),
        simulated,
        wall: started.elapsed(),
        acknowledged: record.acked.len(),
        faults_applied,
        tool_calls,
    })
}

/// Formation: every node up, every shard led, with no faults. A cluster that
/// does not form in time is a liveness violation.
fn formation(runner: &mut Runner<'_>, options: &SimOptions) -> anyhow::Result<Option<Violation>> {
    runner.trace(format!("formation: {} nodes, {} shards", options.nodes, options.shards));
    let formation_end = runner.sim.elapsed() + FORMATION_BOUND;
    while !converged(&runner.world, options.shards) {
        runner.step().map_err(anyhow::Error::msg)?;
        if runner.sim.elapsed() > formation_end {
            return Ok(Some(Violation {
                invariant: Invariant::Convergence,
                detail: format!("the cluster did not form within {FORMATION_BOUND:?}"),
            }));
        }
    }
    Ok(None)
}

/// Safety: the workload runs under the fault plan. Returns how many faults were applied.
fn safety(runner: &mut Runner<'_>, options: &SimOptions) -> anyhow::Result<usize> {
    for client in 1..=options.clients {
        runner.sim.client(format!("c{client}"), workload::run_appender(runner.world.clone(), client));
    }
    if options.agent_sessions > 0 {
        runner.sim.client("agents", workload::run_agent_client(runner.world.clone()));
    }
    let shape = PlanShape {
        nodes: options.nodes,
        shards: options.shards,
        safety: options.safety,
        kinds: options.faults.clone(),
    };
    let mut schedule = plan(options.seed, &shape).into_iter().peekable();
    let safety_start = runner.sim.elapsed();
    let mut faults_applied = 0;
    runner.trace(format!("safety phase: faults {}", fault_names(&options.faults)));
    while runner.sim.elapsed() < safety_start + options.safety {
        while let Some((_, fault)) = schedule.next_if(|(at, _)| safety_start + *at <= runner.sim.elapsed()) {
            runner.apply(&fault);
            faults_applied += 1;
        }
        runner.supervise();
        runner.replace();
        runner.step().map_err(anyhow::Error::msg)?;
    }
    Ok(faults_applied)
}

/// Liveness: every fault undone and stopped; the cluster must converge and
/// every client and session finish within the bound.
fn liveness(runner: &mut Runner<'_>, options: &SimOptions) -> anyhow::Result<Option<Violation>> {
    runner.trace("liveness phase: faults stop");
    undo_faults(runner, options);
    let world = runner.world.clone();
    let clients = options.clients as usize + usize::from(options.agent_sessions > 0);
    let liveness_end = runner.sim.elapsed() + options.liveness;
    let mut next_placement_check = runner.sim.elapsed();
    loop {
        runner.supervise();
        runner.replace();
        // Shards that lost a replica get their placement back; a request
        // made while no metadata leader was known is repeated.
        if runner.sim.elapsed() >= next_placement_check {
            runner.restore_placements();
            next_placement_check = runner.sim.elapsed() + PLACEMENT_CHECK_INTERVAL;
        }
        let done = world.record().clients_done >= clients && runner.replaced();
        if done && converged(&world, options.shards) {
            return Ok(None);
        }
        if runner.sim.elapsed() > liveness_end {
            return Ok(Some(unfinished(&world, options, clients, runner.replaced())));
        }
        runner.step().map_err(anyhow::Error::msg)?;
    }
}

/// Heals the network, clears every disk fault and restarts every node.
fn undo_faults(runner: &mut Runner<'_>, options: &SimOptions) {
    runner.heal();
    runner.sim.set_fail_rate(0.0);
    runner.sim.set_max_message_latency(Duration::from_millis(2));
    for node in 1..=options.nodes {
        runner.world.disks[&node].set_faults(DiskFaults::default());
        runner.restart(node);
    }
    runner.world.ledger.stop_faults();
    runner.world.duplicate_per_million.store(0, Ordering::Relaxed);
}

/// The liveness violation of a run whose cluster did not finish in time.
fn unfinished(world: &World, options: &SimOptions, clients: usize, replaced: bool) -> Violation {
    let is_converged = converged(world, options.shards);
    let record = world.record();
    let unfinished: Vec<String> = record
        .agent_sessions
        .iter()
        .filter(|session| !record.agent_sessions_finished.contains(session))
        .map(|session| describe_session(world, *session))
        .collect();
    Violation {
        invariant: Invariant::Convergence,
        detail: format!(
            "{:?} after faults stopped: {} of {clients} clients finished, replicas converged: {is_converged}, wiped machines' old ids removed: {replaced}, unfinished agent sessions: [{}]; groups: {}",
            options.liveness,
            record.clients_done,
            unfinished.join(", "),
            group_report(world, options.shards)
        ),
    }
}

/// The checkers, over the history and what every replica holds now.
fn final_checks(world: &World, converged_now: bool) -> Vec<Violation> {
    let replicas = scan_replicas(world);
    let mut violations = Vec::new();
    {
        let record = world.record();
        violations.extend(checkers::acknowledged_kept(&record.acked, &replicas));
        violations.extend(checkers::terminated_is_last(&record.terminated, &replicas));
        violations.extend(checkers::one_leader_per_term(&record.leaderships.iter().cloned().collect::<Vec<_>>()));
        violations.extend(checkers::stale_epochs_never_append(&record.epochs));
    }
    violations.extend(checkers::replicas_agree(&replicas, converged_now));
    violations.extend(checkers::timestamps_monotonic(&replicas));
    violations.extend(checkers::effects_at_most_once(&world.ledger.effects()));
    violations.extend(checkers::no_secret_in_log(&replicas, std::slice::from_ref(&world.secret)));
    violations
}
