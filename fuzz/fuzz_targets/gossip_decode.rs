//! Fuzzes the gossip example's packet decoder (`examples/gossip/codec.rs`,
//! the very file the example compiles).
//!
//! Every input is tried twice: as a datagram off the wire (almost always
//! stopped by the MAC check), and sealed with a valid MAC so that the body
//! parser sees it. Neither may panic, and a packet that decodes must encode
//! back to exactly the same bytes (the format has one encoding per packet).
//!
//! ```text
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run gossip_decode -- -max_total_time=600
//! ```

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../examples/gossip/codec.rs"]
mod codec;

fn codec() -> &'static codec::Codec {
    static CODEC: OnceLock<codec::Codec> = OnceLock::new();
    CODEC.get_or_init(|| codec::Codec::new(b"fuzzing key", codec::DEFAULT_MAX_PACKET))
}

fuzz_target!(|data: &[u8]| {
    let codec = codec();
    if let Ok(packet) = codec.decode(data) {
        assert_eq!(codec.encode(&packet), data);
    }
    let sealed = codec.seal(data.to_vec());
    if let Ok(packet) = codec.decode(&sealed) {
        assert_eq!(codec::encoded_len(&packet), sealed.len());
        assert_eq!(codec.encode(&packet), sealed);
    }
});
