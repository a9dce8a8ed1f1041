/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The ABI between bpf/quorum.bpf.c and src/quorum/: one mmap()ed entry that
 * user space configures and the program keeps its tallies in.
 *
 * Configuration is a sequence lock: user space makes `generation` odd,
 * writes the other fields, and makes it even again (each change adds 2).
 * The program reads `generation` before and after the fields and counts
 * nothing on a mismatch or an odd value. Every tally carries the tag of
 * the configuration it was made under in its top 16 bits (round in the
 * low 48), so a program run that read the old epoch never mixes its
 * tallies into the new one: a value of another tag reads as round 0.
 */
#ifndef ELEC_QUORUM_H
#define ELEC_QUORUM_H

#include <linux/types.h>

/* Voters are numbered 0..EB_MAX_VOTERS-1 (one bit each in `voters`). */
#define EB_MAX_VOTERS 64
/* Largest UDP length (header and payload) whose checksum the program
 * verifies itself; longer acks with an unverified checksum pass. */
#define EB_VERIFY_MAX 256

/* Where a voter's acks come from. */
struct eb_voter_addr {
	__be32 addr;  /* IPv4 source address */
	__be16 port;  /* UDP source port */
	__u16 pad;
};

struct eb_quorum {
	/* Written by user space. */
	__u64 generation; /* sequence lock, see above; 0 = never configured */
	__u64 epoch;      /* acks of another epoch pass */
	__u64 voters;     /* bit v: voter v is counted; others pass */
	__u64 high;       /* acks for rounds above pass (not sent yet) */
	__u32 k;          /* acks that make a quorum, 1..=EB_MAX_VOTERS */
	__be16 port;      /* UDP destination port of the acks */
	__u16 span;       /* 1 + the highest voter number: scans stop there */
	struct eb_voter_addr voter_addr[EB_MAX_VOTERS]; /* acks from elsewhere pass */
	/* Written by the program (and by user space for the acks it counts). */
	__u64 complete;               /* tag<<48 | highest round with k voters */
	__u64 acked[EB_MAX_VOTERS];   /* tag<<48 | highest round voter v acked */
};

/* Counters kept by the program, one per CPU (index 0 of `counters`). */
struct eb_quorum_counters {
	__u64 quorums;        /* passed: the ack completed a quorum */
	__u64 counted;        /* dropped: counted towards a quorum not complete yet */
	__u64 duplicates;     /* dropped: the voter had acked that round already */
	__u64 late;           /* dropped: the round was complete already */
	__u64 other_epoch;    /* passed: another epoch, or not configured */
	__u64 outside_window; /* passed: round 0 or above `high` */
	__u64 unknown_voter;  /* passed: a voter not in `voters`, or not from its address */
	__u64 not_acks;       /* passed: to the port but not a valid ack */
	__u64 unverified;     /* passed: checksum not verifiable here, or contended */
};

_Static_assert(sizeof(struct eb_quorum) == 48 + 16 * EB_MAX_VOTERS, "eb_quorum layout changed");
_Static_assert(sizeof(struct eb_quorum_counters) == 72, "eb_quorum_counters layout changed");

#endif /* ELEC_QUORUM_H */
