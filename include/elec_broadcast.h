/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The ABI between bpf/fan_out.bpf.c and the Rust loader in src/.
 *
 * This header is the only definition of the map layout. The Rust side does not
 * restate it: libbpf-cargo turns the BTF of these structs into Rust types
 * (`skel::types::eb_slot`, ...), build.rs turns every `#define EB_NAME value`
 * into a Rust constant (one name and one number per line), and
 * src/kernel/abi.rs asserts at compile time that sizes and offsets are what
 * the loader expects.
 */
#ifndef ELEC_BROADCAST_H
#define ELEC_BROADCAST_H

#include <linux/types.h>

/* Destinations one packet fans out to. Longer lists are split by user space. */
#define EB_MAX_DESTS 256
/* Sockets that can be registered at once (slots in the `slots` map). */
#define EB_MAX_SOCKETS 1024
/* Datagrams one slot can have armed at once (a batch: several payloads for
 * the same destinations, sent with one sendmmsg). A power of two: the tag of
 * the datagram for arms[i] is i modulo EB_MAX_BATCH. */
#define EB_MAX_BATCH 16

/* The address family of a slot's destinations (`family`): every
 * destination of one slot, and the datagram fanned out to them, is of one. */
#define EB_FAMILY_IPV4 4
#define EB_FAMILY_IPV6 6

/* The armed datagram was sent with UDP_SEGMENT, so the kernel made it
 * CHECKSUM_PARTIAL: its UDP checksum field holds the pseudo-header sum. */
#define EB_SLOT_PARTIAL 1

/* `lost_from` of a datagram the program took but could not fan out (not
 * IPv4/UDP without options or IPv6/UDP without extension headers,
 * fragmented, not as armed): it went to dests[0] as sent, and no other
 * destination got anything. */
#define EB_NOT_FANNED_OUT 0xffffffff

/* One destination of a fan-out, already resolved by user space. */
struct eb_dest {
	__u8 mac[6];     /* Ethernet address of the next hop */
	__be16 port;     /* UDP destination port, network byte order */
	__be32 addr[4];  /* destination address, network byte order: an IPv4
			  * address in addr[0] (the rest 0), or an IPv6 one */
};

/*
 * One armed datagram of a slot, and what became of its fan-out.
 *
 * User space stores a tag, a non-zero number used once, in `armed` (release
 * ordering) and sends one datagram to dests[0] whose transmit time
 * (skb->tstamp, set with SCM_TXTIME) is that tag. Tags are handed out in
 * blocks of EB_MAX_BATCH, so the tag of arms[i] is i modulo EB_MAX_BATCH:
 * that is how the program finds the arm of a datagram. It fans out only a
 * datagram whose tag equals its arm's `armed`, and takes the arm with a
 * compare-and-swap, so exactly one packet per arm is fanned out. It writes
 * the results and stores the tag in `done` last. User space takes the arm
 * back after its send: if it is still there, the program never saw the
 * datagram.
 */
struct eb_arm {
	__u64 armed;     /* tag of the armed send; 0 = idle */
	__u64 done;      /* tag the results below belong to */
	__u32 ip_len;    /* length of the armed datagram's IP packet, header
			  * included (IPv4 total length; IPv6 40 + payload
			  * length), host order */
	__u32 flags;     /* EB_SLOT_* for the armed send */
	__u32 copies;    /* result: clones that the interface accepted */
	__u32 failures;  /* result: clones that bpf_clone_redirect could not deliver */
	__u32 lost_from; /* result: dests[lost_from..count) got nothing because a
			  * header rewrite failed (no memory); == count if none;
			  * EB_NOT_FANNED_OUT if there was no fan-out */
	__u32 pad;
	__u64 failed[EB_MAX_DESTS / 64]; /* result: bit i set = the clone for dests[i] failed */
};

/*
 * Per-socket state, one entry of the mmap()ed `slots` array: one destination
 * list, and up to EB_MAX_BATCH datagrams armed to be fanned out to it.
 * User space writes `dests` and `count` while no arm is armed.
 */
struct eb_slot {
	__u32 count;     /* destinations in dests[], 1..=EB_MAX_DESTS */
	__u32 family;    /* EB_FAMILY_* of dests[] */
	struct eb_arm arms[EB_MAX_BATCH];
	struct eb_dest dests[EB_MAX_DESTS];
};

/* Counters kept by the program, one per CPU (index 0 of `stats`). */
struct eb_stats {
	__u64 fan_outs;        /* packets fanned out */
	__u64 clones;          /* clones accepted by the interface */
	__u64 clone_failures;  /* clones that bpf_clone_redirect could not deliver */
	__u64 rewrite_failures;/* header rewrites that failed (destinations lost) */
	__u64 mismatches;      /* tagged datagram not fanned out: not IPv4/UDP without
				* options or IPv6/UDP without extension headers,
				* fragmented, or not as armed */
};

/* Layout is part of the ABI: catch accidental changes on the C side too. */
_Static_assert(sizeof(struct eb_dest) == 24, "eb_dest layout changed");
_Static_assert(sizeof(struct eb_arm) == 40 + EB_MAX_DESTS / 8, "eb_arm layout changed");
_Static_assert(sizeof(struct eb_slot) == 8 + EB_MAX_BATCH * sizeof(struct eb_arm) +
					     24 * EB_MAX_DESTS,
	       "eb_slot layout changed");
_Static_assert((EB_MAX_BATCH & (EB_MAX_BATCH - 1)) == 0, "EB_MAX_BATCH is a power of two");
_Static_assert(sizeof(struct eb_stats) == 40, "eb_stats layout changed");

#endif /* ELEC_BROADCAST_H */
