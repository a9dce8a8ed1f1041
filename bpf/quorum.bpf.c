// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Ingress quorum collector (TC, or XDP): k acknowledgements in, one
 * wake-up out.
 *
 * The program sees every packet the interface receives. It acts only on
 * IPv4 UDP datagrams to the configured port that carry a valid cumulative
 * `struct eb_ack` (include/elec_wire.h) of the configured epoch, from a
 * configured voter (from that voter's address), for a round in
 * (complete, high]. For those it keeps,
 * per voter, the highest round acknowledged and, for the whole set, the
 * highest round that k voters have acknowledged (`complete`):
 *
 *   the ack raises `complete`            -> pass it (the application wakes)
 *   it counts, no quorum yet             -> drop
 *   the voter had acked that round       -> drop (duplicate)
 *   the round was complete already       -> drop (late)
 *   anything else (other epoch, unknown  -> pass untouched: the program is
 *   voter, outside the window, malformed,   not sure, the application is
 *   checksum not verifiable, contention)
 *
 * Every decision is counted. Several CPUs may run this at once: both tallies
 * change only by compare-and-swap, and exactly one run wins each advance of
 * `complete`, so exactly one datagram passes per advance.
 *
 * src/quorum/tally.rs runs the same algorithm on the same memory for the
 * acks that reach user space (and for the whole of the user-space mode).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "checksum.h"

#include "elec_wire.h"
#include "elec_quorum.h"

#define IP_MF     0x2000
#define IP_OFFSET 0x1fff
#define UDP_OFF   (ETH_HLEN + sizeof(struct iphdr))
#define TAG_SHIFT 48

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))

/* Let the packet go on to the next program and the stack. */
#define PASS TC_ACT_UNSPEC
#define DROP TC_ACT_SHOT

/* Configuration and tallies, mmap()ed by user space (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_quorum);
} quorum SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_quorum_counters);
} counters SEC(".maps");

/* Room to verify a checksum: the UDP datagram plus zero padding to 4 bytes. */
struct scratch {
	__u8 bytes[EB_VERIFY_MAX + 4];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* The headers of an ack, shifted by two bytes so that the IPv4, UDP and ack
 * fields sit on their natural alignment on the stack. */
struct packet {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct eb_ack ack;
} __attribute__((packed, aligned(8)));

#define HEADERS_LEN (ETH_HLEN + sizeof(struct iphdr) + sizeof(struct udphdr))

/* Copy bytes of the packet out: the TC and the XDP flavour of the program
 * share everything else (`xdp` is a constant in each, so the other branch
 * is compiled out). */
static __always_inline long load(void *ctx, const int xdp, __u32 off, void *to, __u32 len)
{
	return xdp ? bpf_xdp_load_bytes(ctx, off, to, len) : bpf_skb_load_bytes(ctx, off, to, len);
}

/* Whether the UDP checksum is right, or known to be right. A CHECKSUM_PARTIAL
 * datagram from a sender on this host (or across a veth) holds only the
 * pseudo-header sum, which a datagram with a full checksum matches with
 * probability 1/65535; a NIC has verified the checksum of what it received
 * (CHECKSUM_UNNECESSARY). Anything else is summed here, up to EB_VERIFY_MAX. */
static __always_inline int checksum_ok(void *ctx, const int xdp, const struct packet *p)
{
	struct scratch *s;
	__u32 zero = 0, len = bpf_ntohs(p->udp.len);
	__u64 pseudo;
	__s64 sum;

	if (!xdp && bpf_csum_level(ctx, BPF_CSUM_LEVEL_QUERY) >= 0)
		return 1;
	if (p->udp.check == 0) /* the sender computed no checksum (IPv4 allows it) */
		return 1;
	pseudo = pseudo_sum(p->ip.saddr, p->ip.daddr, p->udp.len);
	if (p->udp.check == fold(pseudo))
		return 1;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s || len > EB_VERIFY_MAX || len < sizeof(struct udphdr))
		return 0;
	*(__u32 *)&s->bytes[len & ~3U] = 0; /* zero padding after the datagram */
	if (load(ctx, xdp, UDP_OFF, s->bytes, len))
		return 0;
	sum = bpf_csum_diff(0, 0, (__be32 *)s->bytes, (len + 3) & ~3U, fold(pseudo));
	return sum >= 0 && fold(sum) == 0xffff;
}

static __always_inline __u64 round_of(__u64 value, __u64 tag)
{
	return (value >> TAG_SHIFT) == tag ? value & EB_MAX_ROUND : 0;
}

/* One scan over the voters (bpf_loop passes it by pointer): the highest
 * round below `below`, and how many voters have it. */
struct scan {
	struct eb_quorum *q;
	__u64 tag;
	__u64 voters;
	__u64 below;
	__u64 max;
	__u32 ties;
};

static long scan_voter(__u32 v, void *data)
{
	struct scan *s = data;
	__u64 r;

	if (v >= EB_MAX_VOTERS) /* bounds acked[] for the verifier */
		return 1;
	if (!(s->voters & (1ULL << v)))
		return 0;
	r = round_of(READ_ONCE(s->q->acked[v]), s->tag);
	if (r >= s->below)
		return 0;
	if (r > s->max) {
		s->max = r;
		s->ties = 1;
	} else if (r == s->max) {
		s->ties++;
	}
	return 0;
}

/* The search for the k-th highest round (bpf_loop passes it by pointer):
 * one scan per step, each for the next lower round. */
struct kth {
	struct scan s;
	__u32 need;   /* voters still to cover */
	__u32 span;
	__u64 result; /* the round found; 0: none */
};

static long next_round(__u32 i, void *data)
{
	struct kth *t = data;

	t->s.max = 0;
	t->s.ties = 0;
	if (bpf_loop(t->span, scan_voter, &t->s, 0) < 0 || t->s.max == 0)
		return 1;
	if (t->s.ties >= t->need) {
		t->result = t->s.max;
		return 1;
	}
	t->need -= t->s.ties;
	t->s.below = t->s.max;
	return 0;
}

/* The highest round that at least k of the voters have acknowledged: scan
 * for the highest round, then the next lower one, ..., until k voters are
 * covered. Each scan covers at least one voter, so k scans are enough.
 * Both loops are bpf_loop()s, so the verifier checks each body once
 * instead of every unrolled step of every path through the caller (which
 * took more than its million instructions on Linux 6.18). */
static __always_inline __u64 kth_highest(struct eb_quorum *q, __u64 tag, __u64 voters, __u32 k,
					 __u32 span)
{
	struct kth t = {
		.s = { .q = q, .tag = tag, .voters = voters, .below = ~0ULL },
		.need = k,
		.span = span,
	};

	if (bpf_loop(EB_MAX_VOTERS, next_round, &t, 0) < 0)
		return 0;
	return t.result;
}

/* What became of one ack; indexes into struct eb_quorum_counters. */
enum verdict { QUORUM, COUNTED, DUPLICATE, LATE, OTHER_EPOCH, OUTSIDE_WINDOW,
	       UNKNOWN_VOTER, NOT_AN_ACK, UNVERIFIED, NOT_OURS };

/* Count one ack of `voter` for `round` under configuration tag `tag`. */
static __always_inline enum verdict tally(struct eb_quorum *q, __u64 gen, __u32 voter,
					  __u64 round, __u64 voters, __u32 k, __u32 span)
{
	__u64 old, seen, highest, tag = (gen / 2) % 0xffff + 1;
	int raised = 0, i;

	if (voter >= EB_MAX_VOTERS) /* bounds acked[] for the verifier */
		return UNKNOWN_VOTER;
	/* Raise the voter's round (acks are cumulative: never lower it). A
	 * voter's acks come one at a time; a lost race here means trouble. */
	for (i = 0; i < 4; i++) {
		old = READ_ONCE(q->acked[voter]);
		if (round_of(old, tag) >= round)
			break;
		/* A value of another tag reads as 0 and would be overwritten: make
		 * sure it is not the new configuration's (user space reconfigured
		 * since we read it), as far as one more read can. */
		if (__sync_fetch_and_add(&q->generation, 0) != gen)
			return OTHER_EPOCH;
		if (__sync_val_compare_and_swap(&q->acked[voter], old, tag << TAG_SHIFT | round) ==
		    old) {
			raised = 1;
			break;
		}
	}
	if (i == 4)
		return UNVERIFIED;
	/* The compare-and-swap above is a full barrier: the tallies of other
	 * voters are read after our own was published, so of two runs on two
	 * CPUs at least one sees both voters. */
	for (i = 0; i < 4; i++) {
		old = READ_ONCE(q->complete);
		seen = round_of(old, tag);
		if (round <= seen)
			return i == 0 ? LATE : COUNTED;
		/* Even for a duplicate: its first copy may have raised the tally
		 * and lost the race for `complete` (and passed, unsure). */
		highest = kth_highest(q, tag, voters, k, span);
		if (highest <= seen)
			return raised ? COUNTED : DUPLICATE;
		if (__sync_val_compare_and_swap(&q->complete, old, tag << TAG_SHIFT | highest) == old)
			return QUORUM;
	}
	return UNVERIFIED;
}

/* What to do with one packet: NOT_OURS for anything but an IPv4 UDP
 * datagram to the port (not counted), else the decision on it. */
static __always_inline enum verdict decide(void *ctx, const int xdp, struct eb_quorum *q)
{
	struct packet p;
	__u64 gen, epoch, voters, high, round;
	__u32 k, voter, addr, span;
	__u16 port;

	/* Too short for IPv4 and UDP: not ours, whatever it is. */
	if (load(ctx, xdp, 0, &p.eth, HEADERS_LEN) || p.eth.h_proto != bpf_htons(ETH_P_IP))
		return NOT_OURS;
	if (p.ip.ihl != 5 || p.ip.protocol != IPPROTO_UDP ||
	    (p.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) || p.udp.dest != READ_ONCE(q->port))
		return NOT_OURS;

	/* From here on the datagram is to our port: every decision counts. */
	if (bpf_ntohs(p.udp.len) < sizeof(struct udphdr) + sizeof(struct eb_ack) ||
	    load(ctx, xdp, HEADERS_LEN, &p.ack, sizeof(p.ack)) ||
	    p.ack.magic != bpf_htons(EB_ACK_MAGIC) || p.ack.version != EB_WIRE_VERSION ||
	    !(p.ack.flags & EB_ACK_CUMULATIVE) || p.ack.reserved != 0 ||
	    (p.ack.flags & ~(EB_ACK_CUMULATIVE | EB_ACK_FROM_KERNEL)) ||
	    bpf_ntohs(p.ip.tot_len) != sizeof(struct iphdr) + bpf_ntohs(p.udp.len))
		return NOT_AN_ACK;
	/* Never count a voter on the word of a corrupted datagram. */
	if (!checksum_ok(ctx, xdp, &p))
		return UNVERIFIED;
	/* A consistent snapshot of the configuration (sequence lock; the
	 * atomic reads are full barriers). */
	voter = bpf_ntohs(p.ack.voter) & (EB_MAX_VOTERS - 1); /* checked below */
	gen = __sync_fetch_and_add(&q->generation, 0);
	epoch = READ_ONCE(q->epoch);
	voters = READ_ONCE(q->voters);
	high = READ_ONCE(q->high);
	k = READ_ONCE(q->k);
	span = READ_ONCE(q->span);
	addr = READ_ONCE(q->voter_addr[voter].addr);
	port = READ_ONCE(q->voter_addr[voter].port);
	if (gen == 0 || (gen & 1) || __sync_fetch_and_add(&q->generation, 0) != gen ||
	    bpf_be64_to_cpu(p.ack.epoch) != epoch || k == 0 || k > EB_MAX_VOTERS ||
	    span > EB_MAX_VOTERS)
		return OTHER_EPOCH;
	/* A voter counts only from its own address: nobody else can vote in
	 * its name. */
	if (bpf_ntohs(p.ack.voter) >= EB_MAX_VOTERS || !(voters & (1ULL << voter)) ||
	    p.ip.saddr != addr || p.udp.source != port)
		return UNKNOWN_VOTER;
	round = bpf_be64_to_cpu(p.ack.round);
	if (round == 0 || round > high || round > EB_MAX_ROUND)
		return OUTSIDE_WINDOW;
	/* The tally's tag is derived from `gen`: never 0, so a zeroed tally is
	 * stale. */
	return tally(q, gen, voter, round, voters, k, span);
}

/* Counts the decision; returns whether the packet is dropped. */
static __always_inline int counted_drop(enum verdict v)
{
	struct eb_quorum_counters *c;
	__u32 zero = 0;

	if (v == NOT_OURS)
		return 0;
	c = bpf_map_lookup_elem(&counters, &zero);
	if (!c)
		return 0;
	switch (v) {
	case QUORUM: c->quorums++; return 0;
	case COUNTED: c->counted++; return 1;
	case DUPLICATE: c->duplicates++; return 1;
	case LATE: c->late++; return 1;
	case OTHER_EPOCH: c->other_epoch++; return 0;
	case OUTSIDE_WINDOW: c->outside_window++; return 0;
	case UNKNOWN_VOTER: c->unknown_voter++; return 0;
	case NOT_AN_ACK: c->not_acks++; return 0;
	default: c->unverified++; return 0;
	}
}

/* The collector on the TC ingress hook (the default: see src/quorum/). */
SEC("tcx/ingress")
int collect(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct eb_quorum *q = bpf_map_lookup_elem(&quorum, &zero);

	if (!q)
		return PASS;
	return counted_drop(decide(skb, 0, q)) ? DROP : PASS;
}

/* The same collector on the XDP hook, before any skb exists. */
SEC("xdp")
int collect_xdp(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct eb_quorum *q = bpf_map_lookup_elem(&quorum, &zero);

	if (!q)
		return XDP_PASS;
	return counted_drop(decide(ctx, 1, q)) ? XDP_DROP : XDP_PASS;
}


char LICENSE[] SEC("license") = "Dual MIT/GPL";
