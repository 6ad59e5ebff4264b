//! Who connects where, joins what and sends to whom: the plan for one process.
//!
//! Connections have global indices `0..conns`. With `--procs N`, process `I` takes every
//! index `i` with `i % N == I` (for `direct`: every pair `p` with `p % N == I`), so the
//! senders (the lowest indices) are spread over the processes. Groups and nodes are
//! assigned from `i / N + i % N` rather than `i`, so that every process has members of
//! every group and connections to every node even when N divides the number of groups or
//! nodes. Group names are shared: a group's members may be in any process.

use std::net::IpAddr;

use crate::args::{Args, Rate, Scenario};

/// What a connection does once the run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Only reads (and answers pings).
    Receiver,
    /// Sends group messages to group `group` (fanout).
    Group { group: usize },
    /// Sends direct messages to the connection at local index `peer` (direct).
    Direct { peer: usize },
    /// Chat-like mix of group messages, direct messages and requests (mixed).
    Mixed,
}

/// One connection of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSpec {
    /// Global index (the JWT subject is `load-<index>`).
    pub index: usize,
    /// Index into the URL list.
    pub url: usize,
    /// Source address to bind, if `--src` was given.
    pub src: Option<IpAddr>,
    /// Groups joined before the run starts.
    pub groups: Vec<usize>,
    pub role: Role,
}

/// This process's share of the scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    pub conns: Vec<ConnSpec>,
    /// Number of groups (global).
    pub groups: usize,
    /// Nanoseconds between two messages of one sender; `None` with `--rate max`.
    pub interval_ns: Option<f64>,
}

/// The `k` groups of connection `i`: distinct, spread evenly over `0..g`.
pub fn memberships(i: usize, g: usize, k: usize) -> Vec<usize> {
    let stride = g / k.max(1);
    (0..k).map(|j| (i + j * stride) % g).collect()
}

/// Builds the plan of process `proc_index` of `procs`.
pub fn plan(args: &Args, proc_index: usize, procs: usize) -> Plan {
    let nurl = args.urls.len();
    let src = |i: usize| (!args.src.is_empty()).then(|| args.src[i % args.src.len()]);
    let (g, k) = (args.groups, args.groups_per_conn);
    // Index for group and node assignment, decorrelated from the process slices.
    let mix = |i: usize| i / procs + i % procs;
    // Connection `i` of the scenarios that do not pair connections up.
    let spec =
        |i: usize, groups: Vec<usize>, role: Role| ConnSpec { index: i, url: mix(i) % nurl, src: src(i), groups, role };
    let mine = (proc_index..args.conns).step_by(procs);
    let mut conns = Vec::new();
    let senders_total = match args.scenario {
        Scenario::Fanout => {
            for i in mine {
                let groups = memberships(mix(i), g, k);
                let role = if i < args.senders { Role::Group { group: groups[0] } } else { Role::Receiver };
                conns.push(spec(i, groups, role));
            }
            args.senders
        }
        Scenario::Direct => {
            let pairs = args.conns / 2;
            for p in (proc_index..pairs).step_by(procs) {
                let peer = conns.len() + 1;
                let (s, r) = (2 * p, 2 * p + 1);
                let role = Role::Direct { peer };
                conns.push(ConnSpec { index: s, url: p % nurl, src: src(s), groups: vec![], role });
                conns.push(ConnSpec {
                    index: r,
                    url: (p + 1) % nurl,
                    src: src(r),
                    groups: vec![],
                    role: Role::Receiver,
                });
            }
            pairs
        }
        Scenario::Connect => {
            conns.extend(mine.map(|i| spec(i, vec![], Role::Receiver)));
            0
        }
        Scenario::Mixed => {
            conns.extend(mine.map(|i| spec(i, memberships(mix(i), g, k), Role::Mixed)));
            args.conns
        }
    };
    let interval_ns = match args.rate {
        Rate::Max => None,
        Rate::PerSec(r) => Some(1e9 * senders_total.max(1) as f64 / r),
    };
    Plan { conns, groups: g, interval_ns }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_args as args;
    use std::collections::HashSet;

    #[test]
    fn memberships_are_distinct() {
        for g in 1..12 {
            for k in 1..=g {
                for i in 0..30 {
                    let m = memberships(i, g, k);
                    assert_eq!(m.len(), k);
                    assert_eq!(m.iter().collect::<HashSet<_>>().len(), k, "i={i} g={g} k={k}");
                    assert!(m.iter().all(|&x| x < g));
                    assert_eq!(m[0], i % g);
                }
            }
        }
    }

    #[test]
    fn slices_partition_the_connections() {
        let a = args(&["fanout", "--conns", "103", "--groups", "4", "--senders", "6", "--src", "127.0.0.1-3"]);
        let mut seen = HashSet::new();
        let mut senders = 0;
        for p in 0..3 {
            let plan = plan(&a, p, 3);
            for c in &plan.conns {
                assert!(seen.insert(c.index));
                assert_eq!(c.index % 3, p);
                assert_eq!(c.src, Some(a.src[c.index % 3]));
                if let Role::Group { group } = c.role {
                    senders += 1;
                    assert!(c.groups.contains(&group));
                }
            }
            assert_eq!(plan.interval_ns, Some(6e6));
        }
        assert_eq!(seen.len(), 103);
        assert_eq!(senders, 6);
    }

    #[test]
    fn every_process_sees_every_group_and_node() {
        let a = args(&["fanout", "--conns", "1000", "--groups", "2", "--senders", "2", "--url", "ws://a:1/,ws://b:1/"]);
        let mut members = [0usize; 2];
        let mut sender_groups = HashSet::new();
        for p in 0..2 {
            let plan = plan(&a, p, 2);
            let groups: HashSet<usize> = plan.conns.iter().map(|c| c.groups[0]).collect();
            let urls: HashSet<usize> = plan.conns.iter().map(|c| c.url).collect();
            assert_eq!((groups.len(), urls.len()), (2, 2), "process {p}");
            for c in &plan.conns {
                members[c.groups[0]] += 1;
                if let Role::Group { group } = c.role {
                    sender_groups.insert(group);
                }
            }
        }
        assert_eq!(members, [500, 500]);
        assert_eq!(sender_groups.len(), 2, "one sender per group");
        // One process: plain round robin.
        let plan = plan(&a, 0, 1);
        assert!(plan.conns.iter().all(|c| c.groups[0] == c.index % 2 && c.url == c.index % 2));
    }

    #[test]
    fn direct_pairs_cross_nodes() {
        let a = args(&["direct", "--pairs", "5", "--url", "ws://a:1/ws,ws://b:1/ws", "--rate", "100"]);
        let plan = plan(&a, 0, 1);
        assert_eq!(plan.conns.len(), 10);
        assert_eq!(plan.interval_ns, Some(1e9 * 5.0 / 100.0));
        for (l, c) in plan.conns.iter().enumerate() {
            if let Role::Direct { peer } = c.role {
                let r = &plan.conns[peer];
                assert_eq!(r.role, Role::Receiver);
                assert_eq!(r.index, c.index + 1);
                assert_ne!(r.url, c.url, "pair {l} on one node");
            }
        }
        // Two processes: each pair stays in one process.
        let (p0, p1) = (super::plan(&a, 0, 2), super::plan(&a, 1, 2));
        assert_eq!(p0.conns.len() + p1.conns.len(), 10);
        for p in [&p0, &p1] {
            for c in &p.conns {
                if let Role::Direct { peer } = c.role {
                    assert_eq!(p.conns[peer].index, c.index + 1);
                }
            }
        }
    }

    #[test]
    fn rates() {
        let a = args(&["fanout", "--senders", "4", "--rate", "1000"]);
        assert_eq!(plan(&a, 0, 1).interval_ns, Some(4e6));
        let m = args(&["mixed", "--conns", "100", "--rate", "max"]);
        let p = plan(&m, 0, 1);
        assert_eq!(p.interval_ns, None);
        assert!(p.conns.iter().all(|c| c.role == Role::Mixed && c.groups.len() == 2));
        let c = args(&["connect", "--conns", "10"]);
        assert!(plan(&c, 0, 1).conns.iter().all(|c| c.role == Role::Receiver && c.groups.is_empty()));
    }
}
