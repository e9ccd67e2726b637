//! How a responder thread asks the scheduler to run it the moment a request wakes it.
//!
//! A request reaches the speaker in the softirq of whatever task was on the CPU (in the lab,
//! the sender of the request itself). The responder, woken there, answers only once the
//! scheduler switches to it, so two things decide the reply latency: whether the wake-up
//! preempts the running task at once, and whether the responder is woken on that CPU at all
//! (an idle vCPU takes tens of microseconds to come out of the hypervisor's halt).
//!
//! - **Slice.** Under EEVDF (Linux 6.6+) a woken task preempts the running one only if its
//!   virtual deadline is earlier; with the default slice about one wake-up in seven in the lab
//!   did not, and waited for the sender to go to sleep (3-7 µs). Since Linux 6.12 a
//!   `SCHED_OTHER` task may ask for a shorter slice (`sched_attr.sched_runtime`, no privilege
//!   needed), which gives it an earlier deadline: every wake-up preempted, and the median reply
//!   went from 1.33x to 1.31x the kernel's ([benchmarks](../../docs/benchmarks.md)). Older
//!   kernels ignore the field. The thread still runs under the fair scheduler: a flood of
//!   requests cannot starve the node the way a real-time policy could.
//! - **Nice.** With CAP_SYS_NICE the thread also takes nice -10: woken on a busy CPU it gets
//!   the larger share of it. Without the capability (the chart does not grant it) it keeps its
//!   nice value and still gets the slice.
//! - **Pinning.** Each interface has one socket per CPU in a `PACKET_FANOUT_CPU` group, and the
//!   thread of each is pinned to its CPU, so the wake-up is always local.
//!
//! The workspace denies unsafe code; this module is allowed the libc calls for the above, each
//! with its safety argument.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

/// The nice value a responder thread asks for (granted with CAP_SYS_NICE).
pub const RESPONDER_NICE: i32 = -10;

/// The time slice a responder thread asks for: the least the kernel accepts (it clamps
/// custom slices to 0.1-100 ms). The thread works a few microseconds per request.
pub const RESPONDER_SLICE: Duration = Duration::from_micros(100);

/// `SCHED_OTHER` (`SCHED_NORMAL`).
const SCHED_OTHER: u32 = 0;

/// `struct sched_attr` from `<linux/sched/types.h>`, first version (48 bytes), which every
/// kernel since 3.14 accepts; later fields (utilisation clamps) are left out.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;

/// The calling thread's scheduling, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduling {
    pub nice: i32,
    /// The thread's slice; `None` where the kernel does not report one (before EEVDF).
    pub slice: Option<Duration>,
}

/// Asks for [`RESPONDER_NICE`] and [`RESPONDER_SLICE`] for the calling thread (only it: Linux
/// keeps both per thread), then reports what it has. Without CAP_SYS_NICE it asks for the slice
/// alone. An error only when the kernel refuses even that (a seccomp profile without
/// `sched_setattr`); the thread keeps what it had.
pub fn prioritise_responder_thread() -> io::Result<Scheduling> {
    let asked = SchedAttr {
        size: SCHED_ATTR_SIZE,
        policy: SCHED_OTHER,
        nice: RESPONDER_NICE,
        runtime: u64::try_from(RESPONDER_SLICE.as_nanos()).unwrap_or(u64::MAX),
        ..SchedAttr::default()
    };
    match set_attr(&asked) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let nice = current()?.nice;
            set_attr(&SchedAttr { nice, ..asked })?;
        }
        Err(e) => return Err(e),
    }
    Ok(Scheduling::from(current()?))
}

impl From<SchedAttr> for Scheduling {
    fn from(attr: SchedAttr) -> Scheduling {
        Scheduling {
            nice: attr.nice,
            slice: (attr.runtime > 0).then(|| Duration::from_nanos(attr.runtime)),
        }
    }
}

/// The calling thread's `sched_attr`.
fn current() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a live, writable sched_attr and the size passed is its own, so the
    // kernel writes inside it; pid 0 = the calling thread; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &raw mut attr,
            SCHED_ATTR_SIZE,
            0,
        )
    };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_attr(attr: &SchedAttr) -> io::Result<()> {
    // SAFETY: `attr` is a live sched_attr whose `size` field is its own size, which is all the
    // kernel reads; pid 0 = the calling thread; flags must be 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, std::ptr::from_ref(attr), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to `cpu` (best effort: fails when the CPU is not in the process's
/// allowed set, e.g. a container's cpuset, and the thread then runs anywhere).
pub fn pin_thread_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_SET writes inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its own; pid 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this kernel takes a custom slice for `SCHED_OTHER` (Linux 6.12 and later).
    fn kernel_takes_custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (6, 12)
    }

    const CAP_SYS_NICE: u32 = 23;

    /// Whether this process holds `cap` in its effective set.
    fn has_capability(cap: u32) -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|set| set & (1 << cap) != 0)
    }

    #[test]
    fn a_responder_thread_gets_the_slice_and_with_the_capability_the_nice_value() {
        // A thread of its own: the settings stay with it and leave the test harness alone.
        let (before, after) = std::thread::spawn(|| {
            let before = current().map(Scheduling::from);
            (before, prioritise_responder_thread())
        })
        .join()
        .expect("the thread ran");
        let before = before.expect("sched_getattr works here");
        let after = after.expect("sched_setattr works here");
        let privileged = has_capability(CAP_SYS_NICE);
        if privileged {
            assert_eq!(after.nice, RESPONDER_NICE);
        } else {
            assert_eq!(
                after.nice, before.nice,
                "without CAP_SYS_NICE the nice value stays"
            );
        }
        if kernel_takes_custom_slices() {
            assert_eq!(after.slice, Some(RESPONDER_SLICE));
        }
    }

    #[test]
    fn the_test_harness_thread_is_left_alone() {
        let before = current()
            .map(Scheduling::from)
            .expect("sched_getattr works here");
        std::thread::spawn(prioritise_responder_thread)
            .join()
            .expect("the thread ran")
            .expect("sched_setattr works here");
        assert_eq!(current().map(Scheduling::from).ok(), Some(before));
    }

    #[test]
    fn a_cpu_beyond_the_set_is_refused_without_a_system_call() {
        let error = pin_thread_to_cpu(libc::CPU_SETSIZE as usize).expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
