/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The two headers the receive-side programs read and write on the wire, as
 * the first bytes of a UDP payload (the application's own bytes may follow).
 * Every field is in network byte order. src/header.rs writes and parses the
 * same layout; the compile-time asserts of both sides pin it.
 */
#ifndef ELEC_WIRE_H
#define ELEC_WIRE_H

#include <linux/types.h>

/* Version of both headers. */
#define EB_WIRE_VERSION 1
/* First two bytes of an acknowledgement. */
#define EB_ACK_MAGIC 0xeb0a
/* First two bytes of a sequenced datagram. */
#define EB_SEQUENCED_MAGIC 0xeb05
/* Ack flag: the ack covers every round up to `round` (VR's PrepareOK). */
#define EB_ACK_CUMULATIVE 0x1
/* Ack flag: sent by a kernel program (fast reply), not by user space. */
#define EB_ACK_FROM_KERNEL 0x2
/* Rounds are 48-bit: the collector packs a generation tag above them. */
#define EB_MAX_ROUND 0xffffffffffff

/* An acknowledgement: voter `voter` has round `round` of epoch `epoch`. */
struct eb_ack {
	__be16 magic;   /* EB_ACK_MAGIC */
	__u8 version;   /* EB_WIRE_VERSION */
	__u8 flags;     /* EB_ACK_* */
	__be16 voter;   /* the acknowledging voter, 0..63 */
	__be16 reserved;/* 0 */
	__be64 epoch;   /* the sender's epoch (a view, a term) */
	__be64 round;   /* 1..=EB_MAX_ROUND */
};

/* A datagram of a sequence: round `round` of epoch `epoch`, to be
 * acknowledged to the sender's address at port `ack_port`. */
struct eb_sequenced {
	__be16 magic;    /* EB_SEQUENCED_MAGIC */
	__u8 version;    /* EB_WIRE_VERSION */
	__u8 flags;      /* 0 */
	__be16 ack_port; /* where acks go, on the sender's IP address */
	__be16 reserved; /* 0 */
	__be64 epoch;
	__be64 round;    /* 1..=EB_MAX_ROUND */
};

_Static_assert(sizeof(struct eb_ack) == 24, "eb_ack layout changed");
_Static_assert(sizeof(struct eb_sequenced) == 24, "eb_sequenced layout changed");

#endif /* ELEC_WIRE_H */
