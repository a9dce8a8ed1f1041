/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* One's complement sums for the receive-side programs (quorum, reply). */
#ifndef ELEC_CHECKSUM_H
#define ELEC_CHECKSUM_H

#include <linux/in.h>
#include <linux/types.h>
#include <bpf/bpf_endian.h>

/* A one's complement sum folded to 16 bits. */
static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* The UDP pseudo-header sum (addresses, protocol, length), unfolded, in the
 * byte order of the packet. A CHECKSUM_PARTIAL datagram carries it folded
 * (not complemented) in its checksum field. */
static __always_inline __u64 pseudo_sum(__be32 saddr, __be32 daddr, __be16 udp_len)
{
	return (saddr & 0xffff) + (saddr >> 16) + (daddr & 0xffff) + (daddr >> 16) +
	       bpf_htons(IPPROTO_UDP) + udp_len;
}

#endif /* ELEC_CHECKSUM_H */
