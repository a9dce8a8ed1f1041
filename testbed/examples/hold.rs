//! Creates a testbed and keeps it until Enter (or Ctrl-C), printing its
//! namespaces, for poking around with `ip -n NS ...` or `ip netns exec`.
//!
//! `cargo run --example hold -- [RECEIVERS] [ADDRS]` (needs root).

use elec_testbed::{Testbed, TestbedConfig};

fn main() -> std::io::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric argument"))
        .collect();
    let tb = Testbed::new(TestbedConfig {
        receivers: args.first().copied().unwrap_or(2),
        addrs_per_receiver: args.get(1).copied().unwrap_or(1),
        ..Default::default()
    })?;
    println!("sender {} ({})", tb.sender_ns(), tb.sender_addr());
    println!("hub    {}", tb.hub_ns());
    for i in 0..tb.num_receivers() {
        println!("r{i}     {} {:?}", tb.receiver_ns(i), tb.receiver_addrs(i));
    }
    println!("press Enter to tear down");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}
