// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * TC egress fan-out: one UDP datagram in, one copy per destination out.
 *
 * User space (src/send/fan_out.rs) registers a socket by its cookie, writes
 * the destination list into that socket's slot, arms one of the slot's arms
 * with a tag (or several: a batch of payloads) and sends ONE datagram per
 * arm to dests[0] carrying the same tag as its transmit time (an SCM_TXTIME
 * control message, so skb->tstamp). This program sees that datagram on the
 * interface's egress hook, and in a single run:
 *
 *   clear the tag
 *   for i in 0 .. count:     (bpf_loop, so 256 destinations pass the verifier)
 *       readdress the packet to dests[i]; bpf_clone_redirect() it to egress
 *   discard the original
 *
 * IPv4 and IPv6 alike: a slot's destinations are of one family, that of
 * the datagram (a dual-stack socket sends one per family).
 *
 * Only the datagram carrying the armed tag is fanned out: another datagram
 * of the same socket (another thread, another process holding the fd), of
 * any length and contents, carries no tag or another one and passes as sent.
 * Every copy is a clone made at nesting depth 1 (never a clone of a clone),
 * so the kernel's transmit recursion limit never cuts a broadcast short, and
 * bpf_clone_redirect() returns each copy's transmit result: every copy the
 * sending host drops is recorded per destination for the caller and counted
 * in `stats`.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "elec_broadcast.h"

/* Offsets in an Ethernet + IPv4 (no options) + UDP frame. */
#define IP_OFF        ETH_HLEN
#define IP_CSUM_OFF   (IP_OFF + offsetof(struct iphdr, check))
#define IP_DADDR_OFF  (IP_OFF + offsetof(struct iphdr, daddr))
#define UDP_OFF       (IP_OFF + sizeof(struct iphdr))
#define UDP_DPORT_OFF (UDP_OFF + offsetof(struct udphdr, dest))
#define UDP_CSUM_OFF  (UDP_OFF + offsetof(struct udphdr, check))

/* Offsets in an Ethernet + IPv6 (no extension header) + UDP frame. */
#define IP6_DADDR_OFF  (IP_OFF + offsetof(struct ipv6hdr, daddr))
#define UDP6_OFF       (IP_OFF + sizeof(struct ipv6hdr))
#define UDP6_DPORT_OFF (UDP6_OFF + offsetof(struct udphdr, dest))
#define UDP6_CSUM_OFF  (UDP6_OFF + offsetof(struct udphdr, check))

#define IP_MF     0x2000 /* more fragments */
#define IP_OFFSET 0x1fff /* fragment offset */

/* dev_queue_xmit()'s verdict when it dropped the clone (full backlog, qdisc). */
#define NET_XMIT_DROP 1

/* No interface has index 0. Redirecting there is how a TC program consumes a
 * packet silently under TCX, which has no TC_ACT_STOLEN: the hook reports
 * NET_XMIT_SUCCESS for every redirect and skb_do_redirect() frees a packet
 * whose target does not exist. TC_ACT_SHOT would tell UDP the datagram was
 * dropped (ENOBUFS, counted in SndbufErrors and OutDiscards) on every
 * fan-out. */
#define NOWHERE 0

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))

/* Let the packet go on. TC_ACT_UNSPEC rather than TC_ACT_OK, so the TC
 * programs and filters after ours on this interface still see it. */
#define PASS TC_ACT_UNSPEC

/* Socket cookie -> index of the socket's slot. Filled by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EB_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u32);
} sockets SEC(".maps");

/* Per-socket destination lists and results, mmap()ed by user space so that a
 * broadcast needs no map syscall at all. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, EB_MAX_SOCKETS);
	__type(key, __u32);
	__type(value, struct eb_slot);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_stats);
} stats SEC(".maps");

/* Non-zero while this CPU runs a fan-out. Clones are transmitted inside the
 * fan-out, on the same CPU with bottom halves off, so a clone re-entering
 * the hook finds it set and passes at once, before any lookup. (Clones carry
 * no tag either, so they would pass anyway; this is the cheap way out.) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fanning_out SEC(".maps");

/* The headers of an IPv4 datagram, shifted by two bytes so that the IPv4
 * and UDP fields sit on their natural alignment on the stack. */
struct frame {
	__u16 pad;
	struct ethhdr eth; /* 14 bytes, packed */
	struct iphdr ip;
	struct udphdr udp;
};

#define FRAME_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

/* The same for an IPv6 datagram. */
struct frame6 {
	__u16 pad;
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct udphdr udp;
};

#define FRAME6_LEN (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct udphdr))

/* State shared by the loop body (bpf_loop passes it by pointer). */
struct fan_out {
	struct __sk_buff *skb;
	struct eb_slot *slot;
	struct eb_arm *arm;
	struct eb_dest cur; /* the addressing the packet carries right now */
	union {             /* the headers as sent, addressed to dests[0] */
		struct frame orig;
		struct frame6 orig6;
	};
	__u32 ipv6;         /* an IPv6 datagram (else IPv4) */
	__u32 partial;      /* the UDP checksum field is a CHECKSUM_PARTIAL seed */
	__u32 copies;       /* clones the interface accepted */
	__u32 failures;     /* clones it did not */
	__u32 lost_from;    /* first destination whose header could not be written */
};

/* One's complement sum folded to 16 bits. */
static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* What replacing address `from` by `to` adds to a one's complement sum
 * (RFC 1624: ~m + m'), word by word, in the byte order of the packet. */
static __always_inline __u32 address_change(__be32 from, __be32 to)
{
	return (~from & 0xffff) + (~from >> 16) + (to & 0xffff) + (to >> 16);
}

/* The same for an IPv6 address (at most 16 x 0x1fffe: no overflow). */
static __always_inline __u32 address_change6(const __be32 *from, const __be32 *to)
{
	return address_change(from[0], to[0]) + address_change(from[1], to[1]) +
	       address_change(from[2], to[2]) + address_change(from[3], to[3]);
}

static __always_inline int same_addr6(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/*
 * Readdress a CHECKSUM_PARTIAL datagram to `to` with a single write of its
 * 42 header bytes. Both checksums are computed here from the headers as
 * sent: the IPv4 header checksum incrementally (RFC 1624), and the UDP
 * field, which for CHECKSUM_PARTIAL holds the pseudo-header sum that the
 * device (or the kernel) completes over the datagram later, by the same
 * address change; the port is not part of that seed.
 */
static __always_inline int readdress_partial(struct __sk_buff *skb, const struct frame *orig,
					     const struct eb_dest *to)
{
	struct frame f = *orig;
	__u32 change = address_change(orig->ip.daddr, to->addr[0]);

	__builtin_memcpy(f.eth.h_dest, to->mac, ETH_ALEN);
	f.ip.daddr = to->addr[0];
	f.ip.check = ~fold((__u16)~orig->ip.check + change);
	f.udp.dest = to->port;
	f.udp.check = fold(orig->udp.check + change);
	return bpf_skb_store_bytes(skb, 0, &f.eth, FRAME_LEN, 0);
}

/* The same for IPv6: one write of 62 header bytes. IPv6 has no header
 * checksum; the 16-byte address is part of the UDP pseudo-header. */
static __always_inline int readdress_partial6(struct __sk_buff *skb, const struct frame6 *orig,
					      const struct eb_dest *to)
{
	struct frame6 f = *orig;
	__u32 change = address_change6(orig->ip.daddr.in6_u.u6_addr32, to->addr);

	__builtin_memcpy(f.eth.h_dest, to->mac, ETH_ALEN);
	__builtin_memcpy(f.ip.daddr.in6_u.u6_addr32, to->addr, sizeof(to->addr));
	f.udp.dest = to->port;
	f.udp.check = fold(orig->udp.check + change);
	return bpf_skb_store_bytes(skb, 0, &f.eth, FRAME6_LEN, 0);
}

static __always_inline int same_mac(const struct eb_dest *a, const struct eb_dest *b)
{
	/* eb_dest is 4-aligned and mac sits at offset 0: two aligned loads. */
	return *(const __u32 *)&a->mac[0] == *(const __u32 *)&b->mac[0] &&
	       *(const __u16 *)&a->mac[4] == *(const __u16 *)&b->mac[4];
}

/* Writes the port of `to` where it differs from that of `from`, with the
 * UDP checksum (at `csum_off`) updated to match. */
static __always_inline int readdress_port(struct __sk_buff *skb, __u32 port_off, __u32 csum_off,
					  const struct eb_dest *from, const struct eb_dest *to)
{
	if (from->port == to->port)
		return 0;
	if (bpf_l4_csum_replace(skb, csum_off, from->port, to->port,
				BPF_F_MARK_MANGLED_0 | sizeof(to->port)))
		return -1;
	return bpf_skb_store_bytes(skb, port_off, &to->port, sizeof(to->port), 0);
}

/*
 * Readdress the packet from `from` to `to`, writing only the fields that
 * differ. Both checksums are updated incrementally: the address is part of
 * the UDP pseudo-header (BPF_F_PSEUDO_HDR), which keeps the seed of a
 * CHECKSUM_PARTIAL packet right as well as a full software checksum; the port
 * is plain UDP header. BPF_F_MARK_MANGLED_0 keeps a "no checksum" 0 as 0
 * (IPv4 only: an IPv6 UDP checksum is never 0), and writes a sum of 0 as
 * 0xffff. The first write after a clone un-shares the header
 * (pskb_expand_head).
 */
static __always_inline int readdress(struct __sk_buff *skb, const struct eb_dest *from,
				     const struct eb_dest *to)
{
	if (!same_mac(from, to) && bpf_skb_store_bytes(skb, 0, to->mac, ETH_ALEN, 0))
		return -1;
	if (from->addr[0] != to->addr[0]) {
		if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from->addr[0], to->addr[0],
					BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(to->addr[0])))
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from->addr[0], to->addr[0],
					sizeof(to->addr[0])))
			return -1;
		if (bpf_skb_store_bytes(skb, IP_DADDR_OFF, &to->addr[0], sizeof(to->addr[0]), 0))
			return -1;
	}
	return readdress_port(skb, UDP_DPORT_OFF, UDP_CSUM_OFF, from, to);
}

/* The same for IPv6: the address change goes into the UDP checksum as one
 * difference (size 0: `to` is the sum to add). */
static __always_inline int readdress6(struct __sk_buff *skb, const struct eb_dest *from,
				      const struct eb_dest *to)
{
	if (!same_mac(from, to) && bpf_skb_store_bytes(skb, 0, to->mac, ETH_ALEN, 0))
		return -1;
	if (!same_addr6(from->addr, to->addr)) {
		if (bpf_l4_csum_replace(skb, UDP6_CSUM_OFF, 0, address_change6(from->addr, to->addr),
					BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0))
			return -1;
		if (bpf_skb_store_bytes(skb, IP6_DADDR_OFF, to->addr, sizeof(to->addr), 0))
			return -1;
	}
	return readdress_port(skb, UDP6_DPORT_OFF, UDP6_CSUM_OFF, from, to);
}

/* Sends the packet, addressed as it is now, as the copy for dests[i]: a
 * clone, whose transmit result is recorded. */
static __always_inline void clone_out(struct fan_out *f, __u32 i)
{
	long ret;

	/* Flags 0 = egress of this same interface. The clone re-enters this
	 * program, finds the per-CPU flag set and passes. The result is the
	 * clone's own transmit: < 0 if it could not be made or sent, and
	 * NET_XMIT_DROP if the device or its queue dropped it (a full backlog
	 * behind a veth, a full qdisc). NET_XMIT_CN means it was queued. */
	ret = bpf_clone_redirect(f->skb, f->skb->ifindex, 0);
	if (ret < 0 || ret == NET_XMIT_DROP) {
		f->arm->failed[i / 64] |= 1ULL << (i % 64);
		f->failures++;
	} else {
		f->copies++;
	}
}

/* Readdresses the packet as the copy for dests[i] (i > 0). */
static __always_inline int readdress_to(struct fan_out *f, struct eb_dest *to)
{
	if (f->ipv6)
		return f->partial ? readdress_partial6(f->skb, &f->orig6, to)
				  : readdress6(f->skb, &f->cur, to);
	return f->partial ? readdress_partial(f->skb, &f->orig, to) : readdress(f->skb, &f->cur, to);
}

/* Loop body: copy i goes to dests[i]. Returns 1 to stop the loop. One
 * body for both families (a branch on f->ipv6): the verifier inlines a
 * bpf_loop() whose call always has the same callback, and saves an
 * indirect call per copy; two calls with two callbacks were merged by
 * clang into one call of either, which it does not inline. */
static long clone_to(__u32 i, void *data)
{
	struct fan_out *f = data;
	struct eb_slot *slot = f->slot;

	if (i >= EB_MAX_DESTS) /* bounds dests[i] for the verifier */
		return 1;
	/* Copy 0 goes out as sent; the others are readdressed first. */
	if (i > 0 && readdress_to(f, &slot->dests[i])) {
		/* The header may be half-written: no later copy can be trusted. */
		f->lost_from = i;
		return 1;
	}
	/* The field-by-field rewrite of the next copy starts from this one's
	 * addressing; the single write does not need it. */
	if (!f->partial)
		f->cur = slot->dests[i];
	clone_out(f, i);
	return 0;
}

/* Whether the IPv4 datagram has the shape the fixed offsets above assume
 * (no options, not a fragment, UDP) and is the one armed (its length, its
 * destination). Loads its headers into f->orig and sets f->partial. */
static __always_inline int takes4(struct __sk_buff *skb, struct fan_out *f)
{
	struct eb_dest *first = &f->slot->dests[0];
	struct frame *o = &f->orig;

	if (f->slot->family != EB_FAMILY_IPV4 || bpf_skb_load_bytes(skb, 0, &o->eth, FRAME_LEN) ||
	    o->ip.ihl != 5 || o->ip.protocol != IPPROTO_UDP ||
	    (o->ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    bpf_ntohs(o->ip.tot_len) != f->arm->ip_len || o->ip.daddr != first->addr[0] ||
	    o->udp.dest != first->port)
		return 0;
	/* The single-write path needs a CHECKSUM_PARTIAL seed. User space says
	 * so for datagrams sent with UDP_SEGMENT (the kernel refuses those
	 * otherwise), and the field must hold exactly the pseudo-header sum. */
	f->partial = (f->arm->flags & EB_SLOT_PARTIAL) &&
		     o->udp.check == fold((o->ip.saddr & 0xffff) + (o->ip.saddr >> 16) +
					  (o->ip.daddr & 0xffff) + (o->ip.daddr >> 16) +
					  bpf_htons(IPPROTO_UDP) + o->udp.len);
	return 1;
}

/* The same for IPv6: UDP directly after the fixed header (a datagram with
 * extension headers, a fragment among them, passes as sent). */
static __always_inline int takes6(struct __sk_buff *skb, struct fan_out *f)
{
	struct eb_dest *first = &f->slot->dests[0];
	struct frame6 *o = &f->orig6;
	const __be32 *s, *d;
	__u32 sum;

	if (f->slot->family != EB_FAMILY_IPV6 ||
	    bpf_skb_load_bytes(skb, 0, &o->eth, FRAME6_LEN) || o->ip.version != 6 ||
	    o->ip.nexthdr != IPPROTO_UDP ||
	    bpf_ntohs(o->ip.payload_len) + sizeof(struct ipv6hdr) != f->arm->ip_len ||
	    !same_addr6(o->ip.daddr.in6_u.u6_addr32, first->addr) || o->udp.dest != first->port)
		return 0;
	s = o->ip.saddr.in6_u.u6_addr32;
	d = o->ip.daddr.in6_u.u6_addr32;
	sum = bpf_htons(IPPROTO_UDP) + o->udp.len;
	for (int w = 0; w < 4; w++)
		sum += (s[w] & 0xffff) + (s[w] >> 16) + (d[w] & 0xffff) + (d[w] >> 16);
	f->partial = (f->arm->flags & EB_SLOT_PARTIAL) && o->udp.check == fold(sum);
	return 1;
}

SEC("tcx/egress")
int fan_out(struct __sk_buff *skb)
{
	struct fan_out f = {};
	struct eb_slot *slot;
	struct eb_arm *arm;
	struct eb_stats *counters;
	__u32 *busy;
	__u32 *index, count, zero = 0;
	__u64 cookie, tag;
	int ipv6, takes;

	/* Cheapest tests first: packets of no socket (every clone, ours or
	 * another program's, and forwarded traffic), our own clones,
	 * everything but IPv4 and IPv6, and every packet without a transmit
	 * time (all UDP datagrams but tagged ones) pass. */
	if (!skb->sk)
		return PASS;
	busy = bpf_map_lookup_elem(&fanning_out, &zero);
	if (!busy || *busy)
		return PASS;
	ipv6 = skb->protocol == bpf_htons(ETH_P_IPV6);
	if (!ipv6 && skb->protocol != bpf_htons(ETH_P_IP))
		return PASS;
	tag = skb->tstamp;
	if (!tag)
		return PASS;
	/* Only sockets user space registered (cookie 0 = no socket). */
	cookie = bpf_get_socket_cookie(skb);
	index = bpf_map_lookup_elem(&sockets, &cookie);
	if (!index)
		return PASS;
	slot = bpf_map_lookup_elem(&slots, index);
	if (!slot)
		return PASS;
	/* The one datagram an armed broadcast sent carries its arm's tag, and
	 * the tag says which arm (its low bits). Any other datagram (an
	 * ordinary send on this socket, by any thread or process, an earlier
	 * broadcast's datagram that was held up, a TCP segment with a pacing
	 * time) has no tag or another value, and passes as sent. */
	arm = &slot->arms[tag & (EB_MAX_BATCH - 1)];
	if (READ_ONCE(arm->armed) != tag)
		return PASS;

	/* The tag is not a transmit time: no copy carries it on, nor its type
	 * (a delivery time). */
	bpf_skb_set_tstamp(skb, 0, BPF_SKB_TSTAMP_UNSPEC);
	/* Take the arm: exactly one fan-out per tag. If user space took it back
	 * first (it gave up waiting for this datagram), send it as it is. The
	 * compare-and-swap is a full barrier: the slot is read after it. */
	if (__sync_val_compare_and_swap(&arm->armed, tag, 0) != tag)
		return PASS;
	counters = bpf_map_lookup_elem(&stats, &zero);
	f.skb = skb;
	f.slot = slot;
	f.arm = arm;
	f.ipv6 = ipv6;
	/* The datagram must have the shape the fixed offsets above assume. If
	 * not (IP options, IPv6 extension headers, say), it goes to dests[0]
	 * as sent, and the result says so: user space sends the other copies
	 * itself. */
	count = slot->count;
	takes = ipv6 ? takes6(skb, &f) : takes4(skb, &f);
	if (!counters || !takes || count == 0 || count > EB_MAX_DESTS) {
		if (counters)
			counters->mismatches++;
		arm->copies = 0;
		arm->failures = 0;
		arm->lost_from = EB_NOT_FANNED_OUT;
		__sync_lock_test_and_set(&arm->done, tag);
		return PASS;
	}

	for (int w = 0; w < EB_MAX_DESTS / 64; w++)
		arm->failed[w] = 0;
	f.cur = slot->dests[0];
	f.lost_from = count;

	/* Hash the flow once here, so that clones inherit the hash instead of
	 * each being dissected again on its way (RPS, qdiscs). */
	bpf_get_hash_recalc(skb);
	/* One clone per destination, the last one included: a clone's transmit
	 * result comes back to us, the original's would go to UDP, which drops
	 * it unless the socket sets IP_RECVERR. */
	*busy = 1;
	if (bpf_loop(count, clone_to, &f, 0) < 0)
		f.lost_from = 0;
	*busy = 0;
	if (f.lost_from < count)
		counters->rewrite_failures += count - f.lost_from;

	counters->fan_outs++;
	counters->clones += f.copies;
	counters->clone_failures += f.failures;
	arm->copies = f.copies;
	arm->failures = f.failures;
	arm->lost_from = f.lost_from;
	/* Published last (atomic, so ordered after the results above). */
	__sync_lock_test_and_set(&arm->done, tag);
	/* Every copy has left as a clone: the original is consumed, and the
	 * sender's send succeeds whatever became of the copies. */
	return bpf_redirect(NOWHERE, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
