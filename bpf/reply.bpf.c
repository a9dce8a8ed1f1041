// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * TC ingress fast reply: the next datagram of a sequence is queued in a
 * ring buffer for the application and acknowledged from here, without
 * waking the application up.
 *
 * The program acts on IPv4 UDP datagrams to the configured port that start
 * with a valid `struct eb_sequenced` (include/elec_wire.h). For the one
 * whose round is the next expected one in the armed epoch, from the armed
 * sender (nobody else can make this host acknowledge anything):
 *
 *   reserve room in the ring, copy the datagram in
 *   take the round (compare-and-swap `next` to round + 1), submit the record
 *   turn the packet into a `struct eb_ack` for that round and send it back
 *   out of the same interface to the sender's address, at `ack_port`
 *
 * The ack is sent only once the record is in the ring: an ack means "queued
 * in kernel memory for the application". Everything else passes to the
 * socket as usual, counted: a gap, an earlier round, another epoch, a frozen
 * program, a full ring, a datagram not sequenced, too long, or with a wrong
 * checksum. The application takes what the socket gets (src/reply/).
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
#include "elec_reply.h"

#define IP_MF       0x2000
#define IP_DF       0x4000
#define IP_OFFSET   0x1fff
#define UDP_OFF     (ETH_HLEN + sizeof(struct iphdr))
#define HEADERS_LEN (UDP_OFF + sizeof(struct udphdr))
#define ACK_LEN     (HEADERS_LEN + sizeof(struct eb_ack))

#define TAG_SHIFT   48

#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))

#define PASS TC_ACT_UNSPEC
#define DROP TC_ACT_SHOT

/* The queue of taken datagrams; its size is set by user space before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} ring SEC(".maps");

/* Arming and the next round, mmap()ed by user space (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_reply);
} reply SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_reply_counters);
} counters SEC(".maps");

/* Room to verify a checksum in chunks: the UDP datagram, zero-padded. */
#define CHUNK 512
#define CHUNKS 18
struct scratch {
	__u8 bytes[CHUNK * CHUNKS];
};

_Static_assert(sizeof(struct udphdr) + EB_REPLY_MAX_PAYLOAD + 4 <= CHUNK * CHUNKS, "scratch too small");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* The headers of the datagram, shifted by two bytes so that the IPv4 and
 * UDP fields sit on their natural alignment on the stack. */
struct headers {
	__u16 pad;
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
};

/* The ack frame, built on the stack and written with one store; six bytes
 * in, so that every header after the Ethernet one is naturally aligned and
 * the four follow each other without padding. */
struct ack_frame {
	__u8 pad[6];
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct eb_ack ack;
};

/* State of the chunked checksum (bpf_loop passes it by pointer). */
struct summing {
	struct scratch *s;
	__u32 len;   /* bytes to sum, a multiple of 4 */
	__s64 sum;
};

static long sum_chunk(__u32 i, void *data)
{
	struct summing *c = data;
	__u32 off = i * CHUNK, size;

	if (i >= CHUNKS || off >= c->len || c->sum < 0)
		return 1;
	size = c->len - off;
	if (size > CHUNK)
		size = CHUNK;
	c->sum = bpf_csum_diff(0, 0, (__be32 *)&c->s->bytes[off], size, c->sum);
	return 0;
}

/* Whether the UDP checksum is right, or known to be (see quorum.bpf.c for
 * the CHECKSUM_PARTIAL seed); `*partial` says the latter case. */
static __always_inline int checksum_ok(struct __sk_buff *skb, const struct headers *h,
				       __u32 udp_len, int *partial)
{
	struct summing c = {};
	__u32 zero = 0;

	*partial = h->udp.check == fold(pseudo_sum(h->ip.saddr, h->ip.daddr, h->udp.len));
	if (*partial || h->udp.check == 0 || bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) >= 0)
		return 1;
	c.s = bpf_map_lookup_elem(&scratch, &zero);
	if (!c.s || udp_len > sizeof(struct udphdr) + EB_REPLY_MAX_PAYLOAD)
		return 0;
	*(__u32 *)&c.s->bytes[udp_len & ~3U] = 0; /* zero padding after the datagram */
	if (bpf_skb_load_bytes(skb, UDP_OFF, c.s->bytes, udp_len))
		return 0;
	c.len = (udp_len + 3) & ~3U;
	c.sum = fold(pseudo_sum(h->ip.saddr, h->ip.daddr, h->udp.len));
	if (bpf_loop(CHUNKS, sum_chunk, &c, 0) < 0)
		return 0;
	return c.sum >= 0 && fold(c.sum) == 0xffff;
}

/* What became of one datagram; indexes into struct eb_reply_counters. */
enum verdict { ACKED, RING_FULL, GAP, DUPLICATE, OTHER_EPOCH, FROZEN, NOT_SEQUENCED, TOO_LONG,
	       BAD_CHECKSUM, ACK_FAILURE };

/*
 * Queue the datagram (`len` payload bytes) in a record of `room` bytes of
 * payload, and take round `round` if it is still the next one. The copy
 * comes first, so that nothing can fail once the round is taken.
 */
static __always_inline enum verdict take(struct __sk_buff *skb, struct eb_reply *r,
					 const struct headers *h, __u32 len, __u64 tag,
					 __u64 round, const __u32 room)
{
	struct eb_record *rec;

	if (len > room)
		return TOO_LONG;
	rec = bpf_ringbuf_reserve(&ring, sizeof(*rec) + room, 0);
	if (!rec)
		return RING_FULL;
	rec->len = len;
	rec->saddr = h->ip.saddr;
	rec->sport = h->udp.source;
	rec->dport = h->udp.dest;
	rec->udp_len = h->udp.len;
	rec->udp_check = h->udp.check;
	if (bpf_skb_load_bytes(skb, HEADERS_LEN, rec->payload, len) ||
	    __sync_val_compare_and_swap(&r->next, tag << TAG_SHIFT | round,
					tag << TAG_SHIFT | (round + 1)) != (tag << TAG_SHIFT | round)) {
		/* Taken by user space meanwhile, or re-armed: not ours. */
		bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		return DUPLICATE;
	}
	bpf_ringbuf_submit(rec, (READ_ONCE(r->flags) & EB_REPLY_QUIET) ? BPF_RB_NO_WAKEUP : 0);
	return ACKED;
}

/* Turn the packet into the ack of `round` and send it back to the sender. */
static __always_inline int send_ack(struct __sk_buff *skb, const struct headers *h,
				    const struct eb_sequenced *seq, __u16 voter, int partial)
{
	struct ack_frame f = {};
	__s64 sum;

	__builtin_memcpy(f.eth.h_dest, h->eth.h_source, ETH_ALEN);
	__builtin_memcpy(f.eth.h_source, h->eth.h_dest, ETH_ALEN);
	f.eth.h_proto = bpf_htons(ETH_P_IP);
	f.ip.version = 4;
	f.ip.ihl = 5;
	f.ip.tot_len = bpf_htons(ACK_LEN - ETH_HLEN);
	f.ip.frag_off = bpf_htons(IP_DF);
	f.ip.ttl = 64;
	f.ip.protocol = IPPROTO_UDP;
	f.ip.saddr = h->ip.daddr;
	f.ip.daddr = h->ip.saddr;
	sum = bpf_csum_diff(0, 0, (__be32 *)&f.ip, sizeof(f.ip), 0);
	if (sum < 0)
		return -1;
	f.ip.check = ~fold(sum);
	f.udp.source = h->udp.dest;
	f.udp.dest = seq->ack_port;
	f.udp.len = bpf_htons(sizeof(struct udphdr) + sizeof(struct eb_ack));
	f.ack.magic = bpf_htons(EB_ACK_MAGIC);
	f.ack.version = EB_WIRE_VERSION;
	f.ack.flags = EB_ACK_CUMULATIVE | EB_ACK_FROM_KERNEL;
	f.ack.voter = bpf_htons(voter);
	f.ack.epoch = seq->epoch;
	f.ack.round = seq->round;
	if (partial) {
		/* The packet is CHECKSUM_PARTIAL (the stack or a device completes
		 * the sum from csum_start, which still points at this UDP
		 * header): the field holds the pseudo-header sum. */
		f.udp.check = fold(pseudo_sum(f.ip.saddr, f.ip.daddr, f.udp.len));
	} else {
		sum = bpf_csum_diff(0, 0, (__be32 *)&f.udp,
				    sizeof(struct udphdr) + sizeof(struct eb_ack),
				    fold(pseudo_sum(f.ip.saddr, f.ip.daddr, f.udp.len)));
		if (sum < 0)
			return -1;
		f.udp.check = ~fold(sum);
		if (f.udp.check == 0)
			f.udp.check = 0xffff; /* 0 would mean "no checksum" */
	}
	if (bpf_skb_change_tail(skb, ACK_LEN, 0) ||
	    bpf_skb_store_bytes(skb, 0, &f.eth, ACK_LEN, 0))
		return -1;
	skb->tstamp = 0; /* a receive time, not a time to send at */
	return 0;
}

_Static_assert(sizeof(struct ack_frame) == 6 + ACK_LEN, "ack frame has padding");

SEC("tcx/ingress")
int fast_reply(struct __sk_buff *skb)
{
	struct headers h;
	struct eb_sequenced seq;
	struct eb_reply *r;
	struct eb_reply_counters *c;
	__u64 gen, epoch, round, next, tag;
	__u32 zero = 0, len, armed, sender_addr;
	__u16 sender_port;
	__u16 voter;
	int partial = 0;
	enum verdict v;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PASS;
	r = bpf_map_lookup_elem(&reply, &zero);
	c = bpf_map_lookup_elem(&counters, &zero);
	if (!r || !c)
		return PASS;
	if (bpf_skb_load_bytes(skb, 0, &h.eth, HEADERS_LEN))
		return PASS;
	if (h.ip.ihl != 5 || h.ip.protocol != IPPROTO_UDP ||
	    (h.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) || h.udp.dest != READ_ONCE(r->port))
		return PASS;

	/* From here on the datagram is to our port: every decision counts. */
	len = bpf_ntohs(h.udp.len);
	if (len < sizeof(struct udphdr) + sizeof(seq) ||
	    bpf_ntohs(h.ip.tot_len) != sizeof(struct iphdr) + len ||
	    bpf_skb_load_bytes(skb, HEADERS_LEN, &seq, sizeof(seq)) ||
	    seq.magic != bpf_htons(EB_SEQUENCED_MAGIC) || seq.version != EB_WIRE_VERSION ||
	    seq.flags != 0 || seq.reserved != 0 || seq.ack_port == 0) {
		v = NOT_SEQUENCED;
		goto out;
	}
	round = bpf_be64_to_cpu(seq.round);
	if (round == 0 || round > EB_MAX_ROUND) {
		v = NOT_SEQUENCED;
		goto out;
	}
	len -= sizeof(struct udphdr);
	if (len > EB_REPLY_MAX_PAYLOAD || skb->gso_segs > 1) {
		v = TOO_LONG;
		goto out;
	}
	/* Never queue a corrupted datagram: the socket would not have. */
	if (!checksum_ok(skb, &h, len + sizeof(struct udphdr), &partial)) {
		v = BAD_CHECKSUM;
		goto out;
	}
	/* A consistent snapshot of the arming (sequence lock). */
	gen = __sync_fetch_and_add(&r->generation, 0);
	epoch = READ_ONCE(r->epoch);
	voter = READ_ONCE(r->voter);
	armed = READ_ONCE(r->armed);
	next = READ_ONCE(r->next);
	sender_addr = READ_ONCE(r->sender_addr);
	sender_port = READ_ONCE(r->sender_port);
	/* `next` carries the tag of the arming it belongs to (as the quorum's
	 * tallies do): a round taken under an old arming can never be taken
	 * at the position of a new one. */
	tag = (gen / 2) % 0xffff + 1;
	if (gen == 0 || (gen & 1) || __sync_fetch_and_add(&r->generation, 0) != gen ||
	    bpf_be64_to_cpu(seq.epoch) != epoch || (next >> TAG_SHIFT) != tag ||
	    h.ip.saddr != sender_addr || h.udp.source != sender_port) {
		v = armed ? OTHER_EPOCH : FROZEN;
		goto out;
	}
	if (!armed) {
		v = FROZEN;
		goto out;
	}
	next &= EB_MAX_ROUND;
	if (round < next) {
		v = DUPLICATE;
		goto out;
	}
	if (round > next) {
		v = GAP;
		goto out;
	}
	/* Three sizes of record, so that small datagrams take little room. */
	if (len <= EB_REPLY_SMALL_PAYLOAD)
		v = take(skb, r, &h, len, tag, round, EB_REPLY_SMALL_PAYLOAD);
	else if (len <= EB_REPLY_MEDIUM_PAYLOAD)
		v = take(skb, r, &h, len, tag, round, EB_REPLY_MEDIUM_PAYLOAD);
	else
		v = take(skb, r, &h, len, tag, round, EB_REPLY_MAX_PAYLOAD);
	if (v != ACKED)
		goto out;
	/* Queued: from here on the datagram is the application's, and the
	 * packet becomes its ack. */
	if (send_ack(skb, &h, &seq, voter, partial)) {
		c->ack_failures++;
		return DROP;
	}
	c->acked++;
	return bpf_redirect(skb->ifindex, 0);
out:
	switch (v) {
	case RING_FULL: c->ring_full++; break;
	case GAP: c->gaps++; break;
	case DUPLICATE: c->duplicates++; break;
	case OTHER_EPOCH: c->other_epoch++; break;
	case FROZEN: c->frozen++; break;
	case NOT_SEQUENCED: c->not_sequenced++; break;
	case TOO_LONG: c->too_long++; break;
	default: c->bad_checksum++; break;
	}
	return PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
