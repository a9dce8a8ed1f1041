//! Placeholder until the gossip example lands.
fn main() {}
