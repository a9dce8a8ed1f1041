//! Attaching a program to an interface's egress or ingress, and detaching
//! exactly what was attached: a TCX link (Linux 6.6+), or a cls_bpf filter
//! on a clsact qdisc (older kernels), created and removed in the namespace
//! of the interface.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::thread;

use libbpf_rs::{AsRawLibbpf, Link, TcHookBuilder, TC_EGRESS, TC_INGRESS};
use nix::sched::{setns, CloneFlags};

use super::program::to_io;
use crate::Error;

/// Which way of the interface a program sees packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    /// Packets the interface sends.
    Egress,
    /// Packets the interface receives.
    Ingress,
}

impl Hook {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Hook::Egress => "egress",
            Hook::Ingress => "ingress",
        }
    }

    fn tc(self) -> libbpf_sys::bpf_tc_attach_point {
        match self {
            Hook::Egress => TC_EGRESS,
            Hook::Ingress => TC_INGRESS,
        }
    }
}

/// Attaches `program` to `hook` of `ifindex`: with TCX where the kernel has
/// it (unless `force_clsact`), else with a clsact filter. Returns the
/// attachment and whether it is a TCX link.
pub(crate) fn attach(
    program: &libbpf_rs::Program<'_>,
    what: &'static str,
    interface: &str,
    ifindex: u32,
    hook: Hook,
    force_clsact: bool,
) -> Result<(Attachment, bool), Error> {
    if !force_clsact {
        match attach_tcx(program, ifindex) {
            Ok(link) => return Ok((Attachment::Tcx(link), true)),
            Err(err) => log::info!("TCX unavailable ({err}); attaching with clsact instead"),
        }
    }
    // A TCX link takes its hook from the program's section (tcx/egress,
    // tcx/ingress); a clsact filter from `hook`.
    Ok((
        attach_clsact(program, what, interface, ifindex, hook)?,
        false,
    ))
}

/// How the program is attached; detached on drop.
pub(super) enum Attachment {
    /// A TCX (Linux 6.6+) or XDP link: dropping the link detaches exactly
    /// our program.
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
                log::warn!("could not enter the namespace of a TC filter to detach it");
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
        log::warn!("detaching a TC filter failed: {err}");
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

fn attach_tcx(program: &libbpf_rs::Program<'_>, ifindex: u32) -> io::Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: size_of::<libbpf_sys::bpf_tcx_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    let program = program.as_libbpf_object();
    // SAFETY: `program` is a loaded program owned by a skeleton, `opts` is a
    // valid bpf_tcx_opts with `sz` set; libbpf returns a new link or NULL.
    let link =
        unsafe { libbpf_sys::bpf_program__attach_tcx(program.as_ptr(), ifindex as i32, &opts) };
    let link = NonNull::new(link).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: `link` is a valid bpf_link that nothing else owns; Link
    // destroys (detaches) it on drop.
    Ok(unsafe { Link::from_ptr(link) })
}

fn attach_clsact(
    program: &libbpf_rs::Program<'_>,
    what: &'static str,
    interface: &str,
    ifindex: u32,
    hook: Hook,
) -> Result<Attachment, Error> {
    let attach_error = |source: io::Error| Error::Attach {
        program: what,
        hook: hook.name(),
        interface: interface.to_string(),
        source,
    };
    let mut qdisc = tc_hook(ifindex as i32, hook.tc());
    // SAFETY: `qdisc` is a fully initialised bpf_tc_hook that lives across the call.
    let err = unsafe { libbpf_sys::bpf_tc_hook_create(&mut qdisc) };
    let created_qdisc = match err {
        0 => true,
        e if -e == libc::EEXIST => false,
        e => return Err(attach_error(io::Error::from_raw_os_error(-e))),
    };
    let mut tc = TcHookBuilder::new(program.as_fd())
        .ifindex(ifindex as i32)
        .hook(hook.tc());
    let netns = File::open("/proc/thread-self/ns/net").map_err(attach_error)?;
    let mut attachment = Attachment::Clsact {
        hook: tc,
        ifindex: ifindex as i32,
        created_qdisc,
        netns,
    };
    // On failure `attachment` drops and removes the qdisc if we made it.
    tc.attach().map_err(|e| attach_error(to_io(e)))?;
    if let Attachment::Clsact { hook: stored, .. } = &mut attachment {
        *stored = tc; // now carries the handle and priority the kernel chose
    }
    Ok(attachment)
}
