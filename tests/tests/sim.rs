//! `agentd sim` as a user runs it: a seed range of failover scenarios runs
//! clean, the same seed writes the same trace in two processes, and every
//! planted bug is caught by its checker within a few seeds.

use std::process::{Command, Output};

/// A smaller run than the default, so the suite stays quick: the same
/// phases and faults, a shorter safety phase and workload.
const SMALL: [&str; 8] = ["--steps", "8000", "--clients", "2", "--appends", "15", "--agent-sessions", "2"];

fn sim(args: &[&str]) -> Output {
    let output = Command::new(agentd_tests::agentd_binary!()).arg("sim").args(args).output().expect("run agentd sim");
    eprintln!(
        "agentd sim {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_range_of_failover_seeds_runs_clean() {
    let mut args =
        vec!["sweep", "--seeds", "1..4", "--faults", "crash,power-loss,partition,isolate,leader-transfer,snapshot"];
    args.extend(SMALL);
    let output = sim(&args);
    assert_eq!(output.status.code(), Some(0), "a failover seed failed:\n{}", stdout(&output));
    assert!(stdout(&output).contains("sweep: 3 seeds, 0 failed"), "{}", stdout(&output));
}

/// A node whose disk falls under its floor stops taking writes and leading,
/// then resumes; with crashes, partitions and leader transfers around it,
/// no invariant breaks.
#[test]
fn full_disks_keep_every_invariant() {
    let mut args = vec!["sweep", "--seeds", "1..4", "--faults", "disk-full,crash,partition,leader-transfer"];
    args.extend(SMALL);
    let output = sim(&args);
    assert_eq!(output.status.code(), Some(0), "a disk-full seed failed:\n{}", stdout(&output));
    assert!(stdout(&output).contains("sweep: 3 seeds, 0 failed"), "{}", stdout(&output));
}

/// Seeds that once failed, kept as regression tests. Seed 11 lost an agent
/// session after a power cut: its new shard leader woke it before the
/// leadership was confirmed and the orchestrator gave up on "not leader".
#[test]
fn seeds_that_found_bugs_pass() {
    // The fault kinds of the day it was found, so that the seed draws the same plan.
    let faults = "crash,power-loss,partition,one-way,isolate,delay,loss,disk,clock,leader-transfer,snapshot,duplicate-wake,sandbox-crash";
    let seeds: &[&str] = &["11"];
    for seed in seeds {
        let mut args = vec!["run", "--seed", seed, "--faults", faults];
        args.extend(SMALL);
        let output = sim(&args);
        assert_eq!(output.status.code(), Some(0), "seed {seed}:\n{}", stdout(&output));
    }
}

/// Seeds on which the simulator saw two leaders in one term while Raft
/// groups used openraft's default leader ids (several leaders per term by
/// design); they pass with standard Raft's. Full default shape, the fault
/// kinds of the day.
#[test]
fn two_leaders_in_a_term_seeds_pass() {
    let faults = "crash,power-loss,partition,one-way,isolate,delay,loss,disk,clock,leader-transfer,snapshot,\
                  duplicate-wake,sandbox-crash,duplicate,membership,disk-full";
    for seed in ["3003", "3030"] {
        let output = sim(&["run", "--seed", seed, "--faults", faults, "--quiet"]);
        assert_eq!(output.status.code(), Some(0), "seed {seed}:\n{}", stdout(&output));
    }
}

/// A seed on which a replica that was moved off a node, deleted there and
/// then placed back replayed its log from the start, met the shard's first
/// membership (itself the only voter) and elected itself with a short log,
/// losing acknowledged events. A deleted replica now keeps its vote and a
/// rejoin floor it must catch up to before it stands for election.
#[test]
fn a_replica_placed_back_after_deletion_does_not_elect_itself() {
    let output = sim(&["run", "--seed", "34", "--faults", "power-loss,membership,duplicate", "--quiet"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn the_same_seed_gives_the_same_trace_in_two_processes() {
    let mut args = vec!["check-determinism", "--seed", "11"];
    args.extend(SMALL);
    let output = sim(&args);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("deterministic: two processes wrote the same"), "{}", stdout(&output));
}

#[test]
fn a_recorded_trace_replays_and_a_changed_one_is_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let trace = dir.path().join("trace.txt");
    let trace_arg = trace.display().to_string();
    let mut run = vec!["run", "--seed", "5", "--trace", trace_arg.as_str(), "--quiet"];
    run.extend(SMALL);
    assert_eq!(sim(&run).status.code(), Some(0));
    let mut replay = vec!["replay", "--seed", "5", "--trace", trace_arg.as_str()];
    replay.extend(SMALL);
    let output = sim(&replay);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("identically"));

    let recorded = std::fs::read_to_string(&trace).expect("read the trace");
    std::fs::write(&trace, recorded.replacen("formation", "formatio", 1)).expect("edit the trace");
    let output = sim(&replay);
    assert_eq!(output.status.code(), Some(3), "{}", stdout(&output));
    assert!(stdout(&output).contains("diverged"));
}

/// Each planted bug, the invariants that may catch it, and how many seeds
/// it may take. Acknowledging unsynced appends loses acknowledged events;
/// openraft usually notices first that its log went backwards and panics,
/// which the no-panic checker reports. A repeated key reaches the sandbox
/// only when a fault lands between a tool call's start and its recorded
/// result: about one seed in six (seeds 1..=24 caught 4), so that bug gets
/// 24 seeds, a miss chance near 1%. A machine back under its old id with an
/// empty disk (its wipes only where a shard can afford to lose one copy) was
/// caught on 4 of seeds 1-16, mostly by openraft's own assertions on a log
/// that went backwards: 20 seeds, a miss chance near 0.3%.
const BUGS: [(&str, &[&str], u64); 5] = [
    ("ack-before-sync", &["acknowledged-events-kept", "no-panic"], 4),
    ("skip-epoch-fence", &["stale-epochs-never-append"], 4),
    ("reexecute-repeated-key", &["tool-effects-at-most-once"], 24),
    ("skip-redaction", &["no-secret-in-log"], 2),
    ("wipe-same-id", &["acknowledged-events-kept", "no-panic", "one-leader-per-term", "replicas-agree"], 20),
];

#[test]
fn every_planted_bug_is_listed_and_caught() {
    let listed = stdout(&sim(&["bugs"]));
    let names: Vec<&str> = listed.lines().collect();
    assert_eq!(names, BUGS.map(|(name, _, _)| name).to_vec());
    for (bug, invariants, seeds) in BUGS {
        let caught = (1..=seeds).find_map(|seed| {
            let seed = seed.to_string();
            let mut args = vec!["run", "--seed", seed.as_str(), "--bug", bug, "--faults", "none"];
            args.extend(SMALL);
            let output = sim(&args);
            (output.status.code() == Some(1)).then(|| (seed.clone(), stdout(&output)))
        });
        let Some((seed, report)) = caught else { panic!("planted bug {bug} was not caught in {seeds} seeds") };
        assert!(
            invariants.iter().any(|invariant| report.contains(&format!("  {invariant}: "))),
            "bug {bug} (seed {seed}) was caught, but not as any of {invariants:?}:\n{report}"
        );
        assert!(report.contains("reproduce: agentd sim run --seed"), "{report}");
    }
}
