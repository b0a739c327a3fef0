//! Live migration between two "hosts" of the test bed (tests/common/hosts.rs): two network
//! namespaces joined by a veth pair, an sshd and a state root each.

mod common;

use common::hosts::Bed;
use common::*;

/// The bed itself: each host's sshd runs the stasis under test with that host's state root,
/// so a job started on B is what `ssh B stasis ps` lists, seen from A.
#[test]
fn the_bed_reaches_each_host_over_ssh() {
    let bed = Bed::new();
    bed.b
        .ok(&["run", "-d", "--name", "bedjob", "--", "sleep", "1000"]);
    let o = bed
        .b
        .ssh_from(&bed.a, "stasis ps --format json")
        .output()
        .expect("ssh");
    assert!(o.status.success(), "ssh to B: {}", stderr(&o));
    let ps: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ps json");
    assert!(ps.to_string().contains("bedjob"), "{ps}");
    let o = bed.a.ssh_from(&bed.b, "stasis ps").output().expect("ssh");
    assert!(o.status.success(), "ssh to A: {}", stderr(&o));
    assert!(!stdout(&o).contains("bedjob"), "A has its own root");
}
