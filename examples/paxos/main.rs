//! Placeholder until the paxos example lands.
fn main() {}
