// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Benchmark only: the least a fan-out costs, to measure the crate's own
 * overhead against (examples/bench_matrix, `bare`). The library never
 * attaches it; the `test-hooks` feature exposes it (`BareFanOut`).
 *
 * Every IPv4/UDP datagram whose source port is `config.sport` is cloned to
 * the `config.dests`, the same way fan_out.bpf.c clones a CHECKSUM_PARTIAL
 * datagram (one write of the 42 header bytes and one bpf_clone_redirect()
 * per copy, at depth 1), and consumed. Nothing else: no socket cookie, no
 * tag, no arm to take, no per-copy results, no counters. Driven by plain
 * sendto(2) calls on a device with transmit checksum offload (so every
 * datagram is CHECKSUM_PARTIAL).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "elec_broadcast.h"

#define PASS TC_ACT_UNSPEC
#define NOWHERE 0

/* Written once by user space before the run. */
struct bare_config {
	__u32 count;
	__be16 sport;
	__u16 pad;
	struct eb_dest dests[EB_MAX_DESTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bare_config);
} config SEC(".maps");

/* Non-zero while this CPU fans out: our own clones pass. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} busy SEC(".maps");

struct frame {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
};

#define FRAME_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

struct bare {
	struct __sk_buff *skb;
	struct bare_config *cfg;
	struct frame orig;
};

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* Copy i: the headers as sent, readdressed to dests[i] (both checksums by
 * the address change, RFC 1624), written at once, then cloned out. */
static long clone_to(__u32 i, void *data)
{
	struct bare *b = data;
	struct frame f;
	struct eb_dest *to;
	__u32 change;

	if (i >= EB_MAX_DESTS)
		return 1;
	to = &b->cfg->dests[i];
	f = b->orig;
	change = (~b->orig.ip.daddr & 0xffff) + (~b->orig.ip.daddr >> 16) +
		 (to->addr[0] & 0xffff) + (to->addr[0] >> 16);
	__builtin_memcpy(f.eth.h_dest, to->mac, ETH_ALEN);
	f.ip.daddr = to->addr[0];
	f.ip.check = ~fold((__u16)~b->orig.ip.check + change);
	f.udp.dest = to->port;
	f.udp.check = fold(b->orig.udp.check + change);
	if (bpf_skb_store_bytes(b->skb, 0, &f.eth, FRAME_LEN, 0))
		return 1;
	bpf_clone_redirect(b->skb, b->skb->ifindex, 0);
	return 0;
}

SEC("tcx/egress")
int bare_fan_out(struct __sk_buff *skb)
{
	struct bare b = {};
	__u32 zero = 0, *on;

	/* Clones (ours, fan_out's) belong to no socket: they pass first. */
	if (!skb->sk)
		return PASS;
	on = bpf_map_lookup_elem(&busy, &zero);
	if (!on || *on || skb->protocol != bpf_htons(ETH_P_IP))
		return PASS;
	b.cfg = bpf_map_lookup_elem(&config, &zero);
	if (!b.cfg || bpf_skb_load_bytes(skb, 0, &b.orig.eth, FRAME_LEN) || b.orig.ip.ihl != 5 ||
	    b.orig.ip.protocol != IPPROTO_UDP || b.orig.udp.source != b.cfg->sport)
		return PASS;
	b.skb = skb;
	/* A send with a transmit time (`bench_matrix interleaved
	 * --bare-txtime`): cleared as fan_out.bpf.c clears its tag. */
	if (skb->tstamp)
		bpf_skb_set_tstamp(skb, 0, BPF_SKB_TSTAMP_UNSPEC);
	/* As fan_out.bpf.c: the clones inherit the flow hash instead of each
	 * being dissected again on its way (RPS). */
	bpf_get_hash_recalc(skb);
	*on = 1;
	bpf_loop(b.cfg->count, clone_to, &b, 0);
	*on = 0;
	return bpf_redirect(NOWHERE, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
