//! Fuzzes the gossip example's packet decoder (`examples/gossip/codec.rs`,
//! the very file the example compiles).
//!
//! Every input is tried as a datagram off the wire (almost always stopped by
//! the tag check), and, with the magic and format written over its first
//! bytes, sealed with a valid tag (the body encrypted if the input's flag
//! byte says so) so that the body parser sees it. Nothing may panic, and a
//! packet that decodes must encode back to exactly the same bytes (the
//! format has one encoding per packet), by the codec that encrypts or not
//! as the packet was.
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

/// Codecs with one keyring: the first authenticates only, the second
/// encrypts too (both open either kind).
fn codecs() -> &'static [codec::Codec; 2] {
    static CODECS: OnceLock<[codec::Codec; 2]> = OnceLock::new();
    CODECS.get_or_init(|| {
        let mut keyring = codec::Keyring::new(1, b"fuzzing key");
        keyring.install(2, b"another fuzzing key");
        [false, true]
            .map(|encrypt| codec::Codec::new(keyring.clone(), codec::DEFAULT_MAX_PACKET, encrypt))
    })
}

/// Decodes `bytes` and checks that what decodes re-encodes to them.
fn check(bytes: &[u8]) {
    let codecs = codecs();
    if let Ok(packet) = codecs[0].decode(bytes) {
        assert_eq!(packet.message.encoded_len(), bytes.len());
        // Re-encode under the key that sealed it, clear or encrypted.
        let mut encoder = codecs[usize::from(packet.encrypted)].clone();
        encoder
            .keyring_mut()
            .use_key(packet.key_id)
            .expect("a packet that decodes names an installed key");
        let again = encoder
            .encode(packet.sender, packet.seq, &packet.message)
            .expect("a packet that decodes encodes");
        assert_eq!(again, bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut unsealed = data.to_vec();
    if unsealed.len() >= 3 {
        unsealed[..2].copy_from_slice(&codec::MAGIC);
        unsealed[2] = codec::FORMAT;
    }
    check(&codecs()[0].seal(unsealed));
});
