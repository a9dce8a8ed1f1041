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

/* The headers of the datagram, shifted by two bytes so that the IPv4 and
 * UDP fields sit on their natural alignment on the stack. */
struct frame {
	__u16 pad;
	struct ethhdr eth; /* 14 bytes, packed */
	struct iphdr ip;
	struct udphdr udp;
};

#define FRAME_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

/* State shared by the loop body (bpf_loop passes it by pointer). */
struct fan_out {
	struct __sk_buff *skb;
	struct eb_slot *slot;
	struct eb_arm *arm;
	struct eb_dest cur; /* the addressing the packet carries right now */
	struct frame orig;  /* the headers as sent, addressed to dests[0] */
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
	__u32 change = address_change(orig->ip.daddr, to->addr);

	__builtin_memcpy(f.eth.h_dest, to->mac, ETH_ALEN);
	f.ip.daddr = to->addr;
	f.ip.check = ~fold((__u16)~orig->ip.check + change);
	f.udp.dest = to->port;
	f.udp.check = fold(orig->udp.check + change);
	return bpf_skb_store_bytes(skb, 0, &f.eth, FRAME_LEN, 0);
}

static __always_inline int same_mac(const struct eb_dest *a, const struct eb_dest *b)
{
	/* eb_dest is 4-aligned and mac sits at offset 0: two aligned loads. */
	return *(const __u32 *)&a->mac[0] == *(const __u32 *)&b->mac[0] &&
	       *(const __u16 *)&a->mac[4] == *(const __u16 *)&b->mac[4];
}

/*
 * Readdress the packet from `from` to `to`, writing only the fields that
 * differ. Both checksums are updated incrementally: the address is part of
 * the UDP pseudo-header (BPF_F_PSEUDO_HDR), which keeps the seed of a
 * CHECKSUM_PARTIAL packet right as well as a full software checksum; the port
 * is plain UDP header. BPF_F_MARK_MANGLED_0 keeps a "no checksum" 0 as 0.
 * The first write after a clone un-shares the header (pskb_expand_head).
 */
static __always_inline int readdress(struct __sk_buff *skb, const struct eb_dest *from,
				     const struct eb_dest *to)
{
	if (!same_mac(from, to) && bpf_skb_store_bytes(skb, 0, to->mac, ETH_ALEN, 0))
		return -1;
	if (from->addr != to->addr) {
		if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from->addr, to->addr,
					BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(to->addr)))
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from->addr, to->addr, sizeof(to->addr)))
			return -1;
		if (bpf_skb_store_bytes(skb, IP_DADDR_OFF, &to->addr, sizeof(to->addr), 0))
			return -1;
	}
	if (from->port != to->port) {
		if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from->port, to->port,
					BPF_F_MARK_MANGLED_0 | sizeof(to->port)))
			return -1;
		if (bpf_skb_store_bytes(skb, UDP_DPORT_OFF, &to->port, sizeof(to->port), 0))
			return -1;
	}
	return 0;
}

/* Loop body: copy i goes to dests[i]. Returns 1 to stop the loop. */
static long clone_to(__u32 i, void *data)
{
	struct fan_out *f = data;
	struct eb_slot *slot = f->slot;
	long ret;

	if (i >= EB_MAX_DESTS) /* bounds dests[i] for the verifier */
		return 1;
	/* Copy 0 goes out as sent; the others are readdressed first. */
	if (i > 0 && (f->partial ? readdress_partial(f->skb, &f->orig, &slot->dests[i])
				 : readdress(f->skb, &f->cur, &slot->dests[i]))) {
		/* The header may be half-written: no later copy can be trusted. */
		f->lost_from = i;
		return 1;
	}
	/* The field-by-field rewrite of the next copy starts from this one's
	 * addressing; the single write does not need it. */
	if (!f->partial)
		f->cur = slot->dests[i];
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
	return 0;
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

	/* Cheapest tests first: packets of no socket (every clone, ours or
	 * another program's, and forwarded traffic), our own clones,
	 * everything but IPv4, and every packet without a transmit time (all
	 * UDP datagrams but tagged ones) pass. */
	if (!skb->sk)
		return PASS;
	busy = bpf_map_lookup_elem(&fanning_out, &zero);
	if (!busy || *busy)
		return PASS;
	if (skb->protocol != bpf_htons(ETH_P_IP))
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

	/* Take the arm: exactly one fan-out per tag. If user space took it back
	 * first (it gave up waiting for this datagram), send it as it is. The
	 * compare-and-swap is a full barrier: the slot is read after it. */
	/* The tag is not a transmit time: no copy carries it on, nor its type
	 * (a delivery time). */
	bpf_skb_set_tstamp(skb, 0, BPF_SKB_TSTAMP_UNSPEC);
	if (__sync_val_compare_and_swap(&arm->armed, tag, 0) != tag)
		return PASS;
	counters = bpf_map_lookup_elem(&stats, &zero);
	/* The datagram must have the shape the fixed offsets above assume. If
	 * not (IP options, say), it goes to dests[0] as sent, and the result
	 * says so: user space sends the other copies itself. */
	count = slot->count;
	if (!counters || bpf_skb_load_bytes(skb, 0, &f.orig.eth, FRAME_LEN) || f.orig.ip.ihl != 5 ||
	    f.orig.ip.protocol != IPPROTO_UDP ||
	    (f.orig.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
	    bpf_ntohs(f.orig.ip.tot_len) != arm->ip_len || count == 0 || count > EB_MAX_DESTS ||
	    f.orig.ip.daddr != slot->dests[0].addr || f.orig.udp.dest != slot->dests[0].port) {
		if (counters)
			counters->mismatches++;
		arm->copies = 0;
		arm->failures = 0;
		arm->lost_from = EB_NOT_FANNED_OUT;
		__sync_lock_test_and_set(&arm->done, tag);
		return PASS;
	}

	/* The single-write path needs a CHECKSUM_PARTIAL seed. User space says
	 * so for datagrams sent with UDP_SEGMENT (the kernel refuses those
	 * otherwise), and the field must hold exactly the pseudo-header sum. */
	f.partial = (arm->flags & EB_SLOT_PARTIAL) &&
		    f.orig.udp.check == fold((f.orig.ip.saddr & 0xffff) + (f.orig.ip.saddr >> 16) +
					     (f.orig.ip.daddr & 0xffff) + (f.orig.ip.daddr >> 16) +
					     bpf_htons(IPPROTO_UDP) + f.orig.udp.len);

	for (int w = 0; w < EB_MAX_DESTS / 64; w++)
		arm->failed[w] = 0;
	f.skb = skb;
	f.slot = slot;
	f.arm = arm;
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
