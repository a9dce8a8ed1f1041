/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The ABI between bpf/reply.bpf.c and src/reply/: one mmap()ed entry that
 * user space arms and the program advances, the records of the ring buffer,
 * and the program's counters.
 *
 * `epoch`, `voter`, `armed`, the sender and `next` change under the sequence lock
 * `generation` (odd while user space writes, as in elec_quorum.h). `next`
 * is the round taken next, with the arming's tag in its top 16 bits; both
 * sides advance it only by compare-and-swap, so a datagram is taken
 * (queued and acknowledged) by exactly one of them, and never under another
 * arming. `armed` = 0 freezes the program: it takes and acknowledges
 * nothing.
 */
#ifndef ELEC_REPLY_H
#define ELEC_REPLY_H

#include <linux/types.h>

/* Queue records without waking the application up: it reads the ring on
 * its own schedule (a follower whose acks the kernel sends, say). */
#define EB_REPLY_QUIET 1

/* Largest UDP payload the program queues (a 9000-byte jumbo frame's). */
#define EB_REPLY_MAX_PAYLOAD 8972
/* Records of up to this payload take a small slot of the ring. */
#define EB_REPLY_SMALL_PAYLOAD 480
#define EB_REPLY_MEDIUM_PAYLOAD 1984

struct eb_reply {
	__u64 generation; /* sequence lock over epoch and voter */
	__u64 epoch;      /* the epoch whose datagrams are taken */
	__u64 next;       /* tag<<48 | the round taken next (compare-and-swap) */
	__u32 armed;      /* 0: frozen, nothing taken or acknowledged */
	__u16 voter;      /* the voter this host acknowledges as */
	__be16 port;      /* UDP port the sequenced datagrams arrive at */
	__be32 sender_addr; /* only datagrams from this IPv4 address ... */
	__be16 sender_port; /* ... and UDP port are taken */
	__u16 flags;        /* EB_REPLY_*, read as they are (no lock) */
};

/* A record of the ring: one datagram, acknowledged by the program. */
struct eb_record {
	__u32 len;        /* UDP payload length (sequenced header included) */
	__be32 saddr;     /* the sender's IPv4 address */
	__be16 sport;     /* the sender's UDP port */
	__be16 dport;     /* the port it was sent to */
	__be16 udp_len;   /* UDP header: length */
	__u16 udp_check;  /* UDP header: checksum */
	__u8 payload[];   /* `len` bytes */
};

/* Counters kept by the program, one per CPU (index 0 of `counters`). */
struct eb_reply_counters {
	__u64 acked;         /* queued in the ring and acknowledged */
	__u64 ring_full;     /* passed: no room in the ring */
	__u64 gaps;          /* passed: a round after the next expected */
	__u64 duplicates;    /* passed: a round before the next expected */
	__u64 other_epoch;   /* passed: another epoch or sender, or being re-armed */
	__u64 frozen;        /* passed: not armed */
	__u64 not_sequenced; /* passed: to the port, not a valid sequenced datagram */
	__u64 too_long;      /* passed: payload above EB_REPLY_MAX_PAYLOAD, or GSO */
	__u64 bad_checksum;  /* passed: checksum wrong (the stack drops it) */
	__u64 ack_failures;  /* queued, but the ack could not be sent */
};

_Static_assert(sizeof(struct eb_reply) == 40, "eb_reply layout changed");
_Static_assert(sizeof(struct eb_record) == 16, "eb_record layout changed");
_Static_assert(sizeof(struct eb_reply_counters) == 80, "eb_reply_counters layout changed");

#endif /* ELEC_REPLY_H */
