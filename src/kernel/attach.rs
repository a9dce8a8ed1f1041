//! Attaching the program to an interface's egress, and detaching exactly
//! what was attached: a TCX link (Linux 6.6+), or a cls_bpf filter on a
//! clsact qdisc (older kernels), created and removed in the namespace of
//! the interface.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::thread;

use libbpf_rs::{AsRawLibbpf, Link, TcHookBuilder, TC_EGRESS};
use nix::sched::{setns, CloneFlags};

use super::abi::FanOutSkel;
use super::program::to_io;
use crate::Error;

/// How the program is attached; detached on drop.
pub(super) enum Attachment {
    /// A TCX link (Linux 6.6+): dropping the link detaches exactly our program.
    Tcx(#[allow(dead_code)] Link),
    /// A cls_bpf filter on a clsact qdisc (older kernels).
    Clsact {
        hook: libbpf_rs::TcHook,
        ifindex: i32,
        /// The qdisc did not exist before us, so we remove it again.
        created_qdisc: bool,
        /// The network namespace the filter lives in: tc requests act on the
        /// calling thread's namespace, and `ifindex` only means something there.
        netns: File,
    },
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Attachment::Clsact {
            hook,
            ifindex,
            created_qdisc,
            netns,
        } = self
        {
            let hook = SendableHook(*hook);
            let (ifindex, created_qdisc) = (*ifindex, *created_qdisc);
            // Detach from a thread inside the filter's namespace, whichever
            // namespace the thread dropping us is in.
            let detached = thread::scope(|scope| {
                scope
                    .spawn(move || {
                        setns(&*netns, CloneFlags::CLONE_NEWNET)?;
                        detach_clsact(hook, ifindex, created_qdisc);
                        Ok::<(), nix::Error>(())
                    })
                    .join()
            });
            if !matches!(detached, Ok(Ok(()))) {
                log::warn!("could not enter the namespace of the fan-out filter to detach it");
            }
        }
    }
}

/// A TcHook to hand to the detaching thread.
struct SendableHook(libbpf_rs::TcHook);

// SAFETY: the only pointer a TcHook holds is the optional qdisc name of its
// bpf_tc_hook, which we never set (NULL); the rest is plain integers.
unsafe impl Send for SendableHook {}

fn detach_clsact(hook: SendableHook, ifindex: i32, created_qdisc: bool) {
    let SendableHook(mut hook) = hook;
    if let Err(err) = hook.detach() {
        log::warn!("detaching the fan-out filter failed: {err}");
    }
    if created_qdisc {
        let mut qdisc = tc_hook(
            ifindex,
            libbpf_sys::BPF_TC_INGRESS | libbpf_sys::BPF_TC_EGRESS,
        );
        // SAFETY: `qdisc` is a fully initialised bpf_tc_hook (sz set) that
        // lives across the call.
        let err = unsafe { libbpf_sys::bpf_tc_hook_destroy(&mut qdisc) };
        if err != 0 {
            log::warn!(
                "removing the clsact qdisc failed: {}",
                io::Error::from_raw_os_error(-err)
            );
        }
    }
}

fn tc_hook(ifindex: i32, attach_point: libbpf_sys::bpf_tc_attach_point) -> libbpf_sys::bpf_tc_hook {
    libbpf_sys::bpf_tc_hook {
        sz: size_of::<libbpf_sys::bpf_tc_hook>() as libbpf_sys::size_t,
        ifindex,
        attach_point,
        ..Default::default()
    }
}

pub(super) fn attach_tcx(skel: &FanOutSkel<'_>, ifindex: u32) -> io::Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: size_of::<libbpf_sys::bpf_tcx_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    let program = skel.progs.fan_out.as_libbpf_object();
    // SAFETY: `program` is a loaded program owned by `skel`, `opts` is a
    // valid bpf_tcx_opts with `sz` set; libbpf returns a new link or NULL.
    let link =
        unsafe { libbpf_sys::bpf_program__attach_tcx(program.as_ptr(), ifindex as i32, &opts) };
    let link = NonNull::new(link).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: `link` is a valid bpf_link that nothing else owns; Link
    // destroys (detaches) it on drop.
    Ok(unsafe { Link::from_ptr(link) })
}

pub(super) fn attach_clsact(
    skel: &FanOutSkel<'_>,
    ifindex: u32,
    interface: &str,
) -> Result<Attachment, Error> {
    let attach_error = |source: io::Error| Error::Attach {
        interface: interface.to_string(),
        source,
    };
    let mut qdisc = tc_hook(ifindex as i32, TC_EGRESS);
    // SAFETY: `qdisc` is a fully initialised bpf_tc_hook that lives across the call.
    let err = unsafe { libbpf_sys::bpf_tc_hook_create(&mut qdisc) };
    let created_qdisc = match err {
        0 => true,
        e if -e == libc::EEXIST => false,
        e => return Err(attach_error(io::Error::from_raw_os_error(-e))),
    };
    let mut hook = TcHookBuilder::new(skel.progs.fan_out.as_fd())
        .ifindex(ifindex as i32)
        .hook(TC_EGRESS);
    let netns = File::open("/proc/thread-self/ns/net").map_err(attach_error)?;
    let mut attachment = Attachment::Clsact {
        hook,
        ifindex: ifindex as i32,
        created_qdisc,
        netns,
    };
    // On failure `attachment` drops and removes the qdisc if we made it.
    hook.attach().map_err(|e| attach_error(to_io(e)))?;
    if let Attachment::Clsact { hook: stored, .. } = &mut attachment {
        *stored = hook; // now carries the handle and priority the kernel chose
    }
    Ok(attachment)
}
