//! Measures how long `Testbed::new` and the teardown take.
//!
//! `cargo run --release --example setup_time -- [RECEIVERS] [ADDRS] [ROUNDS]`
//! (needs root).

use std::time::{Duration, Instant};

use elec_testbed::{Testbed, TestbedConfig};

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label}: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    );
}

fn main() -> std::io::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric argument"))
        .collect();
    let receivers = args.first().copied().unwrap_or(8);
    let addrs = args.get(1).copied().unwrap_or(1);
    let rounds = args.get(2).copied().unwrap_or(10).max(1);
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let tb = Testbed::new(TestbedConfig {
            receivers,
            addrs_per_receiver: addrs,
            ..Default::default()
        })?;
        up.push(t.elapsed());
        let t = Instant::now();
        drop(tb);
        down.push(t.elapsed());
    }
    println!("{receivers} receivers x {addrs} addresses, {rounds} rounds");
    stats("Testbed::new", up);
    stats("drop", down);
    Ok(())
}
