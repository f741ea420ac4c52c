//! Thin wrappers over the Linux calls the load client is made of: epoll, non-blocking sockets bound
//! to a chosen loopback source address, CPU affinity, RLIMIT_NOFILE, FIFOs, and the /proc files the
//! measurements come from. Every `unsafe` block is one libc call on memory we own.
//!
//! Nothing here decides anything; callers get `io::Result`s.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::path::Path;

/// Monotonic clock in nanoseconds: every latency is a difference of two of these, taken in this
/// process, so publisher and subscriber clocks are the same clock.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn check_size(result: libc::ssize_t) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

/// Pins the calling thread (pid 0) or process `pid` to one CPU.
pub fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(libc::sched_setaffinity(
            pid,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// Number of CPUs this process may run on.
pub fn cpus_allowed() -> usize {
    // SAFETY: as in `pin_to_cpu`, reading into a zeroed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set).max(1) as usize
    }
}

/// Raises the soft open-file limit to the hard one and returns (soft, hard) after the change.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    unsafe {
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &limit))?;
        }
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// The same, for use between fork and exec (async-signal-safe: two syscalls, no allocation).
pub fn raise_nofile_limit_in_child() -> io::Result<()> {
    raise_nofile_limit().map(|_| ())
}

pub struct Epoll {
    fd: RawFd,
    /// epoll_pwait2 (nanosecond timeouts, Linux 5.11) answered ENOSYS once: use epoll_wait.
    no_pwait2: std::cell::Cell<bool>,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: creates a descriptor we own and close in Drop.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            fd,
            no_pwait2: std::cell::Cell::new(false),
        })
    }

    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl reads one epoll_event we own.
        check(unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut event) })?;
        Ok(())
    }

    pub fn delete(&self, fd: RawFd) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as above; a failure only means the fd was already gone.
        unsafe {
            libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, fd, &mut event);
        }
    }

    /// Waits at most `timeout_ns` and returns how many entries of `events` were filled. A
    /// nanosecond timeout lets a fixed-rate publisher sleep until its next publish instead of
    /// spinning through sub-millisecond gaps.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ns: u64) -> io::Result<usize> {
        let capacity = events.len().min(i32::MAX as usize) as i32;
        let n = if timeout_ns == 0 || self.no_pwait2.get() {
            let timeout_ms = timeout_ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32;
            // SAFETY: the kernel writes at most `capacity` entries into the slice.
            unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), capacity, timeout_ms) }
        } else {
            let timeout = libc::timespec {
                tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: epoll_pwait2(2) writes at most `capacity` entries into the slice and reads
            // one timespec we own; a null sigmask means "no change".
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.fd,
                    events.as_mut_ptr(),
                    capacity,
                    &timeout as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.no_pwait2.set(true);
                return self.wait(events, timeout_ns);
            }
            n as libc::c_int
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(error);
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}

/// A non-blocking TCP socket bound to `source` (port chosen at connect time thanks to
/// IP_BIND_ADDRESS_NO_PORT, so the 4-tuple, not the local port alone, has to be unique) with a
/// connect to `target` in progress.
pub fn connect_from(source: Ipv4Addr, target: SocketAddrV4) -> io::Result<RawFd> {
    // SAFETY: plain socket calls on a descriptor we own; closed on every error path.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let result = (|| {
            let one: libc::c_int = 1;
            let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let one_ptr = &one as *const libc::c_int as *const libc::c_void;
            check(libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                one_ptr,
                size,
            ))?;
            check(libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                one_ptr,
                size,
            ))?;
            let local = sockaddr(SocketAddrV4::new(source, 0));
            check(libc::bind(
                fd,
                &local as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ))?;
            let remote = sockaddr(target);
            let rc = libc::connect(
                fd,
                &remote as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            if rc < 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::EINPROGRESS) {
                    return Err(error);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(fd),
            Err(error) => {
                libc::close(fd);
                Err(error)
            }
        }
    }
}

fn sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*address.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The pending error of a socket whose non-blocking connect finished (SO_ERROR).
pub fn socket_error(fd: RawFd) -> io::Result<()> {
    let mut value: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int we own.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut size,
        )
    })?;
    if value != 0 {
        return Err(io::Error::from_raw_os_error(value));
    }
    Ok(())
}

pub fn read(fd: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buffer.len() bytes into it.
    check_size(unsafe { libc::read(fd, buffer.as_mut_ptr() as *mut libc::c_void, buffer.len()) })
}

pub fn write(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most bytes.len() bytes from it.
    check_size(unsafe { libc::write(fd, bytes.as_ptr() as *const libc::c_void, bytes.len()) })
}

pub fn close(fd: RawFd) {
    // SAFETY: closes a descriptor the caller owns and never uses again.
    unsafe {
        libc::close(fd);
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

pub fn mkfifo(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })?;
    Ok(())
}

/// Opens a FIFO for writing without blocking. ENXIO means no reader has it open yet.
pub fn open_fifo_writer(path: &Path) -> io::Result<RawFd> {
    let c = c_path(path)?;
    // SAFETY: open reads a NUL-terminated path we own.
    check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })
}

pub fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) on one positive pid (a process we started), no memory involved.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Ignores SIGPIPE so a write to a pipe or socket whose reader went away is an EPIPE, not death.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// CPU time of this whole process (every thread), user + system, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage writes one rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (micros(usage.ru_utime) + micros(usage.ru_stime)) * 1_000
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// utime + stime of process `pid` (all its threads, live and exited) from /proc/PID/stat, in ns.
/// The resolution is one clock tick (10 ms at 100 Hz), so measured windows are seconds long.
pub fn process_cpu_ns(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = text
        .rfind(')')
        .and_then(|at| text.get(at + 1..))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the fields are numbered from 3 (state); utime is field 14, stime field 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(ticks * 1_000_000_000 / clock_ticks_per_second())
}

/// Resident memory of process `pid`: (VmRSS, RssAnon) in bytes, from /proc/PID/status.
pub fn process_memory(pid: u32) -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((kib("VmRSS:") * 1024, kib("RssAnon:") * 1024))
}

/// Kernel slab memory of the whole machine (both ends of every loopback socket), in bytes.
pub fn slab_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Slab:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Whether `pid` is still a live process (not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text
            .rfind(')')
            .and_then(|at| text.get(at + 2..at + 3))
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Ticks of one CPU from /proc/stat: (busy, total, softirq). Busy is everything but idle and
/// iowait. Softirq time (loopback receive processing, among others) is not charged to any
/// process, so a server's own utime + stime can be well below its core's busy time.
pub fn cpu_ticks(cpu: usize) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let prefix = format!("cpu{cpu} ");
    let line = text.lines().find(|line| line.starts_with(&prefix))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait, *softirq))
}
