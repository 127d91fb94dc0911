//! The UAPI control socket of `tunpipe wg`: `/var/run/wireguard/IF.sock`, where `wg` and
//! `wg-quick` configure a userspace WireGuard (<https://www.wireguard.com/xplatform/>).
//!
//! This module owns the socket and its framing; the protocol itself (parsing a `set`, writing
//! a `get`) is the core's `tunpipe::wireguard::uapi`, and the tunnel answers through a
//! [`UapiHandler`]. It follows wireguard-go: `ipc/uapi_unix.go` (`UAPIOpen`: the directory,
//! the socket's mode, a stale socket replaced, a live one refused) and `device/uapi.go`
//! (`IpcHandle`: operations in a loop on one connection, each answered with `errno=N` and an
//! empty line; an unknown operation closes the connection unanswered). Where it differs:
//! - A `set` is read whole, up to its empty line, before it is parsed (the core parses it
//!   atomically). A `set` that the client ends (EOF) before its empty line is refused with
//!   EIO and not applied; wireguard-go applies what it read. A request cut short (a killed
//!   `wg setconf`) could hold `replace_peers=true` and only some of the peers.
//! - A line past `MAX_LINE_BYTES` or a request past `MAX_REQUEST_BYTES` is answered with EIO
//!   and the connection closed (wireguard-go answers EIO past its scanner's 64 KiB, then
//!   reads the rest of the line as the next operation, which closes the connection too).
//! - Bytes a client sends after a `set`'s empty line are kept for the next operation
//!   (wireguard-go's scanner may read them ahead and lose them).
//! - A client silent for [`IDLE_TIMEOUT`] is disconnected, and at most [`MAX_CONNECTIONS`]
//!   are served at once; wireguard-go has neither limit.
//! - A path that exists and is not a socket is refused, not removed.

use log::{debug, info, warn};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tunpipe::wireguard::uapi::{
    format_status, parse_set_bytes, ErrorCode, SetRequest, MAX_LINE_BYTES, MAX_REQUEST_BYTES,
};

/// Where `wg` and `wg-quick` look for a userspace interface's socket (wireguard-go's
/// `socketDirectory`, wireguard-tools' `RUNSTATEDIR "/wireguard/"`).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Most connections served at once. `wg` opens one per command and closes it at once, so a
/// few cover every real use; past it, new clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 8;

/// How long a client may be silent (sending nothing while we wait for a line, or reading
/// nothing while we write an answer) before its connection is closed. `wg` writes its
/// request and reads the answer at once; this only frees the slot of a client that stalls.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest interface name: Linux's IFNAMSIZ less its NUL. The name becomes a path, and
/// `wg` passes its argument on unchecked but for '/'.
const MAX_NAME_BYTES: usize = 15;

/// How often the accept thread looks for a free slot while [`MAX_CONNECTIONS`] are served.
/// Only then: otherwise it sleeps in poll until a client or the stop arrives.
const FULL_RECHECK: Duration = Duration::from_millis(50);

/// How long the accept thread waits before accepting again after an error such as EMFILE,
/// which poll would otherwise report again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 8192;

/// What the socket asks of the running tunnel.
///
/// The server calls it from its connection threads, one operation at a time (as
/// wireguard-go's `ipcMutex`), so a `get` never runs beside a `set`.
pub trait UapiHandler: Send + Sync + 'static {
    /// The `get` answer's lines (everything `tunpipe::wireguard::uapi::format_get` writes,
    /// which already ends with `errno=0\n\n`).
    fn get(&self) -> String;

    /// Applies a parsed `set`; Err carries the errno (positive, e.g. 22) to answer.
    ///
    /// The socket writes it negated, as wireguard-go does and `wg` expects (`errno=-22`); a
    /// negative code is taken as already negated, and 0 is answered as wireguard-go's
    /// "other error", -55 (ENOANO), since `errno=0` would read as success.
    fn set(&self, request: &SetRequest) -> Result<(), i32>;

    /// Someone removed the socket file (or put another in its place): as for wireguard-go,
    /// whose socket's removal is how `wg-quick down` ends it on macOS, the interface should
    /// go. Called once, from the server's watcher thread. The default does nothing.
    fn removed(&self) {}
}

/// A running UAPI control socket. Dropping it stops serving: every thread ends and is joined
/// (so the handler is not called after the drop returns), and the socket file is removed.
///
/// Drop it from a thread of the owner, never from inside [`UapiHandler::set`] or `get`: the
/// drop waits for the connection thread that is calling the handler.
pub struct UapiServer {
    path: PathBuf,
    /// The socket file's device and inode: the drop removes the path only while it is still
    /// this socket, never one a later process bound there.
    identity: (u64, u64),
    /// The stop signal. Dropping it ends the other end's stream, which every thread polls:
    /// EOF stays readable, so no thread can miss it, however late it polls.
    stop: Option<UnixStream>,
    accept: Option<JoinHandle<()>>,
    /// Watches for the socket file's removal ([`UapiHandler::removed`]), where the system
    /// can tell without a timer.
    watcher: Option<JoinHandle<()>>,
}

impl fmt::Debug for UapiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UapiServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl UapiServer {
    /// Binds /var/run/wireguard/<name>.sock (dir param for tests), serves on its own thread(s).
    ///
    /// `dir` is created (mode 0755, as wireguard-go) if missing. The socket's mode is 0600:
    /// only its owner (root) may configure the tunnel. A socket already at the path is
    /// refused if a process answers there, and replaced if not (a stale one).
    ///
    /// # Errors
    /// One line: the name is not a valid interface name, another process serves the
    /// interface, the path exists and is not a socket, or a file operation failed.
    pub fn start(
        dir: &Path,
        name: &str,
        handler: Arc<dyn UapiHandler>,
    ) -> Result<UapiServer, String> {
        check_name(name)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let (stop, stop_rx) =
            UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
        let path = dir.join(format!("{name}.sock"));
        let (listener, identity) = bind(dir, name, &path)?;
        // From here on, an error drops `server`, which removes the socket file.
        let mut server = UapiServer {
            path,
            identity,
            stop: Some(stop),
            accept: None,
            watcher: None,
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make {} nonblocking: {e}", server.path.display()))?;
        let watch_stop = stop_rx
            .try_clone()
            .map_err(|e| format!("cannot copy a socket: {e}"))?;
        let shared = Shared {
            name: name.into(),
            handler: handler.clone(),
            one_at_a_time: Mutex::new(()),
            stop: stop_rx,
        };
        let accept = std::thread::Builder::new()
            .name("tunpipe-uapi".into())
            .spawn(move || accept_loop(listener, Arc::new(shared)))
            .map_err(|e| format!("cannot start the UAPI thread: {e}"))?;
        server.accept = Some(accept);
        match removal::Watch::new(dir) {
            Ok(watch) => {
                let (path, identity) = (server.path.clone(), identity);
                let watcher = std::thread::Builder::new()
                    .name("tunpipe-uapi-w".into())
                    .spawn(move || {
                        if watch.until_gone(&path, identity, watch_stop.as_raw_fd()) {
                            info!("UAPI: {} was removed", path.display());
                            handler.removed();
                        }
                    })
                    .map_err(|e| format!("cannot start the UAPI watcher: {e}"))?;
                server.watcher = Some(watcher);
            }
            Err(e) => warn!(
                "UAPI: removing {} will not stop the interface ({e})",
                server.path.display()
            ),
        }
        info!("UAPI: serving {name} on {}", server.path.display());
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        for thread in [self.accept.take(), self.watcher.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                warn!("UAPI: a thread of {} panicked", self.path.display());
            }
        }
        // The listener is closed (the accept thread owned it), so a client that connects
        // from here on is refused, and `wg` then removes the file itself. Remove it only
        // while it is still ours.
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!("UAPI: cannot remove {}: {e}", self.path.display());
                }
            }
        }
        debug!("UAPI: stopped serving {}", self.path.display());
    }
}

/// Whether the socket file is still the one bound: same device and inode.
fn still_ours(path: &Path, identity: (u64, u64)) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| (meta.dev(), meta.ino()) == identity)
}

/// Telling that the socket file went, from the system's own notices on its directory
/// (inotify on Linux, kqueue on macOS): no timer, so an idle interface sleeps.
mod removal {
    use super::{still_ours, wait, Woke};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::path::Path;

    /// A watch on the socket directory.
    pub(super) struct Watch {
        fd: OwnedFd,
        /// macOS watches the directory through a descriptor of its own.
        #[cfg(target_os = "macos")]
        _dir: OwnedFd,
    }

    impl Watch {
        #[cfg(target_os = "linux")]
        pub(super) fn new(dir: &Path) -> io::Result<Watch> {
            use std::os::unix::ffi::OsStrExt as _;
            // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let dir = std::ffi::CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::other("a NUL in the socket directory's path"))?;
            let mask = libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_DELETE_SELF;
            // SAFETY: a live inotify descriptor, a NUL-terminated path and a mask.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), mask) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Watch { fd })
        }

        #[cfg(target_os = "macos")]
        pub(super) fn new(dir: &Path) -> io::Result<Watch> {
            use std::os::unix::ffi::OsStrExt as _;
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::other("a NUL in the socket directory's path"))?;
            // SAFETY: a NUL-terminated path and flags; returns a new descriptor or -1.
            let raw = unsafe { libc::open(path.as_ptr(), libc::O_EVTONLY | libc::O_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor that nothing else owns.
            let dir_fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: kqueue takes nothing and returns a new descriptor or -1.
            let kq = unsafe { libc::kqueue() };
            if kq < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `kq` is a new descriptor that nothing else owns.
            let kq = unsafe { OwnedFd::from_raw_fd(kq) };
            // SAFETY: an all-zero kevent is a valid value of the plain C struct.
            let mut change: libc::kevent = unsafe { std::mem::zeroed() };
            change.ident = dir_fd.as_raw_fd() as libc::uintptr_t;
            change.filter = libc::EVFILT_VNODE;
            change.flags = libc::EV_ADD | libc::EV_CLEAR;
            change.fflags = libc::NOTE_WRITE | libc::NOTE_DELETE | libc::NOTE_RENAME;
            // SAFETY: one change from a live array of one, no events asked for.
            let added = unsafe {
                libc::kevent(
                    kq.as_raw_fd(),
                    &change,
                    1,
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null(),
                )
            };
            if added < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Watch {
                fd: kq,
                _dir: dir_fd,
            })
        }

        /// Waits until `path` is no longer the socket `identity` (true) or `stop` is
        /// readable (false).
        pub(super) fn until_gone(&self, path: &Path, identity: (u64, u64), stop: RawFd) -> bool {
            loop {
                if !still_ours(path, identity) {
                    return true;
                }
                match wait(Some(self.fd.as_raw_fd()), libc::POLLIN, stop, None) {
                    Ok(Woke::Ready) => self.drain(),
                    Ok(_) => return false,
                    Err(e) => {
                        log::warn!("UAPI: cannot watch {}: {e}", path.display());
                        return false;
                    }
                }
            }
        }

        /// Reads the notices that woke the wait (which file they name does not matter: the
        /// socket is looked at again).
        fn drain(&self) {
            #[cfg(target_os = "linux")]
            {
                let mut buf = [0u8; 4096];
                // SAFETY: reads into a live buffer of its length, from a nonblocking fd.
                while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
                    > 0
                {}
            }
            #[cfg(target_os = "macos")]
            {
                // SAFETY: an all-zero kevent is a valid value of the plain C struct.
                let mut event: libc::kevent = unsafe { std::mem::zeroed() };
                let none = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: room for one event in a live struct; a zero timeout does not wait.
                unsafe {
                    libc::kevent(
                        self.fd.as_raw_fd(),
                        std::ptr::null(),
                        0,
                        &mut event,
                        1,
                        &none,
                    )
                };
            }
        }
    }
}

/// Refuses a name that would not make one file in the socket directory.
fn check_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.contains(['/', '\0'])
        || name == "."
        || name == "..";
    if bad {
        return Err(format!(
            "invalid interface name {name:?} for a control socket: it must be 1 to \
             {MAX_NAME_BYTES} bytes, without '/', and not '.' or '..'"
        ));
    }
    Ok(())
}

/// Binds the socket at `path` with mode 0600, and returns it with the file's (device, inode).
///
/// wireguard-go binds under `umask(077)`, but the umask is the process's: another thread
/// creating a file meanwhile would get the wrong mode, and two threads setting it can
/// restore the wrong one. Binding at `path` and then `chmod`ing it leaves a window in which
/// the socket has the umask's mode (0777 with umask 0) and anyone could connect. So: bind in
/// a fresh directory of mode 0700 beside `path`, where no one else can reach the socket,
/// `chmod` it there, then hard-link it to `path` (`link(2)`: it fails if `path` exists, so a
/// socket another process bound there meanwhile is never replaced) and remove the staging
/// name. A socket is found by its inode, so the linked name serves the same listener.
fn bind(dir: &Path, name: &str, path: &Path) -> Result<(UnixListener, (u64, u64)), String> {
    let staging = Staging::new(dir, name)?;
    let listener = UnixListener::bind(&staging.socket)
        .map_err(|e| format!("cannot bind {}: {e}", staging.socket.display()))?;
    fs::set_permissions(&staging.socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of {}: {e}", staging.socket.display()))?;
    let meta = fs::symlink_metadata(&staging.socket)
        .map_err(|e| format!("cannot stat {}: {e}", staging.socket.display()))?;
    // A second try covers a stale socket that another starter removed and replaced between
    // our look and our link; a third finding is an error rather than a loop.
    for _ in 0..3 {
        clear_stale(name, path)?;
        match fs::hard_link(&staging.socket, path) {
            Ok(()) => return Ok((listener, (meta.dev(), meta.ino()))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
        }
    }
    Err(format!(
        "{} keeps reappearing while tunpipe binds it; is another process starting {name}?",
        path.display()
    ))
}

/// What may stand at `path` before the bind: nothing, or a stale socket, which is removed. A
/// socket that a process answers on, or anything but a socket, is an error.
///
/// As wireguard-go (and `wg` itself): a socket is live when connecting to it succeeds, and
/// stale when the connect is refused. wireguard-go removes whatever is there; this refuses
/// to remove a file or directory that is not a socket.
fn clear_stale(name: &str, path: &Path) -> Result<(), String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "another process serves {name} ({} answers)",
            path.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Ok(()) => {
                info!("UAPI: removed the stale socket {}", path.display());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(
                "cannot remove the stale socket {}: {e}",
                path.display()
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "cannot tell whether a process serves {}: {e}",
            path.display()
        )),
    }
}

/// A directory of mode 0700 in the socket directory, where the socket is bound before it is
/// linked into place; removed, with the staging name, when dropped.
struct Staging {
    dir: PathBuf,
    socket: PathBuf,
}

impl Staging {
    fn new(dir: &Path, name: &str) -> Result<Staging, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut taken = 0;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            // Hidden, and not ending in `.sock`, so `wg show` does not list it. A leftover
            // of a crashed process with our pid is skipped, not removed.
            let staging = dir.join(format!(".{name}.sock.{}.{n}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&staging) {
                Ok(()) => {
                    return Ok(Staging {
                        socket: staging.join("s"),
                        dir: staging,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && taken < 100 => taken += 1,
                Err(e) => return Err(format!("cannot create {}: {e}", staging.display())),
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket);
        if let Err(e) = fs::remove_dir(&self.dir) {
            warn!("UAPI: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// What the accept thread shares with its connection threads.
struct Shared {
    name: Box<str>,
    handler: Arc<dyn UapiHandler>,
    /// Held for each operation: the handler sees one at a time, as wireguard-go's device
    /// holds its `ipcMutex` for each `get` and `set`.
    one_at_a_time: Mutex<()>,
    /// Readable (EOF) once the server is dropped.
    stop: UnixStream,
}

/// Accepts clients until the stop, each served on its own thread, at most
/// [`MAX_CONNECTIONS`] at once; then joins them all.
///
/// A thread per connection, rather than one thread polling every connection, keeps the
/// framing a plain sequence of reads and writes. The threads are short-lived (`wg` closes at
/// once) and bounded, and each gives up on a client silent for [`IDLE_TIMEOUT`], so a stuck
/// client can hold a slot only that long, and never the stop: every wait polls the stop too.
fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let stop = shared.stop.as_raw_fd();
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    loop {
        reap(&mut connections, false);
        if connections.len() >= MAX_CONNECTIONS {
            // Full: new clients wait in the listen backlog until a connection ends.
            match wait(None, 0, stop, Some(FULL_RECHECK)) {
                Ok(Woke::Stopped) => break,
                Ok(_) => continue,
                Err(e) => {
                    warn!("UAPI {}: poll failed: {e}; stopping", shared.name);
                    break;
                }
            }
        }
        match wait(Some(listener.as_raw_fd()), libc::POLLIN, stop, None) {
            Ok(Woke::Stopped) => break,
            Ok(_) => {}
            Err(e) => {
                warn!("UAPI {}: poll failed: {e}; stopping", shared.name);
                break;
            }
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => {
                // EMFILE, ENOMEM...: poll would report the same client again at once.
                warn!("UAPI {}: accept failed: {e}", shared.name);
                if let Ok(Woke::Stopped) = wait(None, 0, stop, Some(ACCEPT_BACKOFF)) {
                    break;
                }
                continue;
            }
        };
        // Linux does not pass O_NONBLOCK on to an accepted socket, macOS does: say it.
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(
                "UAPI {}: cannot make a connection nonblocking: {e}",
                shared.name
            );
            continue;
        }
        let for_thread = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("tunpipe-uapi-c".into())
            .spawn(move || serve(stream, &for_thread))
        {
            Ok(thread) => connections.push(thread),
            Err(e) => warn!(
                "UAPI {}: cannot start a connection thread: {e}",
                shared.name
            ),
        }
    }
    reap(&mut connections, true);
}

/// Joins the connection threads that have ended, or all of them.
fn reap(connections: &mut Vec<JoinHandle<()>>, all: bool) {
    let mut i = 0;
    while i < connections.len() {
        if all || connections[i].is_finished() {
            if connections.swap_remove(i).join().is_err() {
                warn!("UAPI: a connection thread panicked");
            }
        } else {
            i += 1;
        }
    }
}

/// Serves one client until it leaves, goes silent, breaks the protocol, or the stop.
fn serve(stream: UnixStream, shared: &Shared) {
    let mut connection = Connection {
        stream,
        stop: shared.stop.as_raw_fd(),
        pending: Vec::new(),
        used: 0,
    };
    let name = &shared.name;
    let end = loop {
        if let Err(end) = connection.operation(shared) {
            break end;
        }
    };
    // No message quotes what the client sent: a line may hold a key.
    match end {
        End::Closed | End::Stopped => debug!("UAPI {name}: connection closed ({end:?})"),
        End::Silent => warn!(
            "UAPI {name}: a client sent or read nothing for {} s; closing its connection",
            IDLE_TIMEOUT.as_secs()
        ),
        End::Cut => {
            warn!("UAPI {name}: a client closed its connection in the middle of an operation")
        }
        End::UnknownOperation => warn!(
            "UAPI {name}: an operation other than get=1 or set=1 (not shown); closing \
             the connection, as wireguard-go does"
        ),
        End::Overrun(what) => {
            warn!("UAPI {name}: {what}; answered EIO and closed the connection")
        }
        End::Io(e) => warn!("UAPI {name}: connection failed: {e}"),
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The client closed it between operations.
    Closed,
    /// The client closed it in the middle of an operation.
    Cut,
    /// The server is stopping.
    Stopped,
    /// [`IDLE_TIMEOUT`] passed without a byte either way.
    Silent,
    /// An operation line other than `get=1` and `set=1`.
    UnknownOperation,
    /// A line or a request past its limit (which one).
    Overrun(&'static str),
    Io(io::Error),
}

/// One client's socket, and what was read from it and not yet used.
struct Connection {
    stream: UnixStream,
    stop: RawFd,
    /// Bytes read: `pending[used..]` are not yet used.
    pending: Vec<u8>,
    used: usize,
}

impl Connection {
    /// Reads and answers one operation, as wireguard-go's `IpcHandle` does in its loop.
    fn operation(&mut self, shared: &Shared) -> Result<(), End> {
        let mut op = Vec::new();
        match self.read_line(&mut op, MAX_LINE_BYTES) {
            Ok(()) => {}
            // No operation is this long: it is an unknown one.
            Err(End::Overrun(_)) => return Err(End::UnknownOperation),
            Err(End::Cut) => return Err(End::Closed),
            Err(end) => return Err(end),
        }
        // Matched as wireguard-go does, whole and exactly: `get=1\r` is unknown.
        let status = match op.as_slice() {
            b"get=1" => {
                // wireguard-go reads one byte: a newline asks for the answer; anything else
                // is answered EINVAL, the byte used up, and the loop goes on.
                if self.read_byte().map_err(cut)? != b'\n' {
                    ErrorCode::Invalid.errno()
                } else {
                    let answer = {
                        let _one = lock(&shared.one_at_a_time);
                        shared.handler.get()
                    };
                    return self.write_all(answer.as_bytes());
                }
            }
            b"set=1" => match self.read_request() {
                Ok(request) => set(&request, shared),
                Err(end @ (End::Overrun(_) | End::Cut | End::Closed)) => {
                    // Nothing of the request is applied. The client may still read (a
                    // half-closed `wg`), so say why, then close.
                    let _ = self.write_all(format_status(ErrorCode::Io.errno()).as_bytes());
                    return Err(cut(end));
                }
                Err(end) => return Err(end),
            },
            _ => return Err(End::UnknownOperation),
        };
        self.write_all(format_status(status).as_bytes())
    }

    /// The lines of a `set` after `set=1`, each with its newline, up to and with the empty
    /// line (`\n` or `\r\n`, as Go's line scanner), within the core's limits.
    fn read_request(&mut self) -> Result<Vec<u8>, End> {
        let mut request = Vec::new();
        loop {
            let start = request.len();
            self.read_line(&mut request, MAX_LINE_BYTES).map_err(cut)?;
            let line_is_empty = matches!(&request[start..], b"" | b"\r");
            // Counted as `parse_set_bytes` counts: each line with its newline.
            request.push(b'\n');
            if request.len() > MAX_REQUEST_BYTES {
                return Err(End::Overrun(
                    "a set request longer than MAX_REQUEST_BYTES (40 MiB)",
                ));
            }
            if line_is_empty {
                return Ok(request);
            }
        }
    }

    /// Appends the next line, without its newline, to `out`.
    ///
    /// # Errors
    /// [`End::Overrun`] for a line longer than `max` (nothing appended), [`End::Cut`] at EOF
    /// inside a line, [`End::Closed`] at EOF before one, and the waits' ends.
    fn read_line(&mut self, out: &mut Vec<u8>, max: usize) -> Result<(), End> {
        loop {
            let unread = &self.pending[self.used..];
            let window = &unread[..unread.len().min(max + 1)];
            if let Some(at) = window.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&unread[..at]);
                self.used += at + 1;
                return Ok(());
            }
            if unread.len() > max {
                return Err(End::Overrun("a line longer than MAX_LINE_BYTES (4,096)"));
            }
            let partial = !unread.is_empty();
            match self.fill() {
                Err(End::Closed) if partial => return Err(End::Cut),
                other => other?,
            }
        }
    }

    /// The next byte.
    fn read_byte(&mut self) -> Result<u8, End> {
        while self.used == self.pending.len() {
            self.fill()?;
        }
        self.used += 1;
        Ok(self.pending[self.used - 1])
    }

    /// Reads what the client sent next (at least a byte), waiting up to [`IDLE_TIMEOUT`].
    fn fill(&mut self) -> Result<(), End> {
        // Only a partial line is unused when a line is wanted, so this moves little.
        self.pending.drain(..self.used);
        self.used = 0;
        loop {
            // Poll first, even when bytes are there, so that a client that never stops
            // sending cannot keep this thread from seeing the stop.
            self.wait_for(libc::POLLIN)?;
            let len = self.pending.len();
            self.pending.resize(len + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.pending[len..]);
            self.pending.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(End::Closed),
                Ok(_) => return Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                // Linux's answer to a read after the client closed with our answer unread.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(End::Closed),
                Err(e) => return Err(End::Io(e)),
            }
        }
    }

    /// Waits until the client's socket is ready for `events`, for up to [`IDLE_TIMEOUT`], or
    /// the stop.
    fn wait_for(&self, events: libc::c_short) -> Result<(), End> {
        match wait(
            Some(self.stream.as_raw_fd()),
            events,
            self.stop,
            Some(IDLE_TIMEOUT),
        ) {
            Ok(Woke::Ready) => Ok(()),
            Ok(Woke::Stopped) => Err(End::Stopped),
            Ok(Woke::TimedOut) => Err(End::Silent),
            Err(e) => Err(End::Io(e)),
        }
    }

    /// Writes all of `bytes`, waiting up to [`IDLE_TIMEOUT`] each time the client's buffer
    /// is full.
    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), End> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(End::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_for(libc::POLLOUT)?,
                Err(e) => return Err(End::Io(e)),
            }
        }
        Ok(())
    }
}

/// EOF inside an operation is a cut, wherever the line began.
fn cut(end: End) -> End {
    match end {
        End::Closed => End::Cut,
        other => other,
    }
}

/// The status of a `set`: parsed whole, then applied by the handler.
fn set(request: &[u8], shared: &Shared) -> i32 {
    let name = &shared.name;
    let parsed = match parse_set_bytes(request) {
        Ok(parsed) => parsed,
        Err(e) => {
            // A `UapiError` names the line and the key, never a value.
            warn!("UAPI {name}: {e}");
            return e.errno();
        }
    };
    let result = {
        let _one = lock(&shared.one_at_a_time);
        shared.handler.set(&parsed)
    };
    match result {
        Ok(()) => 0,
        Err(code) => {
            let status = status_of(code);
            warn!("UAPI {name}: set refused (errno={status})");
            status
        }
    }
}

/// The status written for a handler's errno: negative, as wireguard-go writes it.
fn status_of(code: i32) -> i32 {
    match code {
        0 => ErrorCode::Unknown.errno(),
        positive if positive > 0 => -positive,
        negative => negative,
    }
}

/// The guard, also after a handler panicked while holding it: the mutex guards no data.
fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Ready,
    Stopped,
    TimedOut,
}

/// Waits until `fd` (if any) is ready for `events`, `stop` turns readable (its other end is
/// gone: the server stops), or `timeout` passes (`None`: no limit). The stop wins a tie.
/// Ready includes an error or hang-up on `fd`, which the read or write that follows reports.
fn wait(
    fd: Option<RawFd>,
    events: libc::c_short,
    stop: RawFd,
    timeout: Option<Duration>,
) -> io::Result<Woke> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        // poll skips an entry whose fd is negative.
        let mut fds = [
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd.unwrap_or(-1),
                events,
                revents: 0,
            },
        ];
        let ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up, so a wait never ends before its time and spins.
                left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `fds` is a live array of initialised pollfds and the count passed is its
        // length; poll writes only their `revents` fields, within the array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Woke::Stopped);
        }
        if fds[1].revents != 0 {
            return Ok(Woke::Ready);
        }
        if n == 0 && ms >= 0 {
            return Ok(Woke::TimedOut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::Command;
    use std::sync::mpsc;
    use tunpipe::wireguard::uapi::{format_get, parse_set, UapiState};
    use tunpipe::wireguard::Key;

    /// A bound for reads and drops that would otherwise hang a broken test; no test waits
    /// for it to pass.
    const HANG_GUARD: Duration = Duration::from_secs(10);

    const PEER_HEX: &str = "c4c8e984c5322c8184c72265b92360274f6a0ad9c72eb68e0b0e0cc4bf46ae04";

    /// A handler that answers `get` with fixed text, records every `set`, and refuses each
    /// with `refuse` if set.
    struct Fake {
        get: String,
        sets: Mutex<Vec<SetRequest>>,
        refuse: Option<i32>,
        removed: std::sync::atomic::AtomicBool,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Arc::new(Fake {
                get: format!(
                    "listen_port=51820\npublic_key={PEER_HEX}\nallowed_ip=10.9.0.0/24\nerrno=0\n\n"
                ),
                sets: Mutex::new(Vec::new()),
                refuse: None,
                removed: Default::default(),
            })
        }

        fn sets(&self) -> Vec<SetRequest> {
            self.sets.lock().unwrap().clone()
        }
    }

    impl UapiHandler for Fake {
        fn get(&self) -> String {
            self.get.clone()
        }

        fn set(&self, request: &SetRequest) -> Result<(), i32> {
            self.sets.lock().unwrap().push(request.clone());
            self.refuse.map_or(Ok(()), Err)
        }

        fn removed(&self) {
            self.removed.store(true, Ordering::SeqCst);
        }
    }

    /// A directory of its own under the system's temporary one, removed with what it holds.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            TempDir(std::env::temp_dir().join(format!("tunpipe-uapi-{}-{n}", std::process::id())))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn start(dir: &TempDir, handler: Arc<dyn UapiHandler>) -> UapiServer {
        UapiServer::start(&dir.0, "tp0", handler).unwrap()
    }

    fn connect(server: &UapiServer) -> UnixStream {
        let stream = UnixStream::connect(server.path()).unwrap();
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        stream
    }

    /// One answer: lines up to `errno=N` and the empty line after it.
    fn answer(reader: &mut impl BufRead) -> String {
        let mut text = String::new();
        loop {
            let start = text.len();
            let n = reader.read_line(&mut text).unwrap();
            assert!(n > 0, "closed before the status; read {text:?}");
            if text[start..].starts_with("errno=") {
                assert_eq!(reader.read_line(&mut text).unwrap(), 1, "{text:?}");
                assert!(text.ends_with("\n\n"), "{text:?}");
                return text;
            }
        }
    }

    /// Whether the server closed the connection (EOF, or a reset for what it left unread).
    fn closed(reader: &mut impl Read) -> bool {
        let mut rest = Vec::new();
        match reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    /// `text`'s answer on a new connection.
    fn ask(server: &UapiServer, text: &str) -> String {
        let stream = connect(server);
        (&stream).write_all(text.as_bytes()).unwrap();
        answer(&mut BufReader::new(&stream))
    }

    #[test]
    fn get_answers_the_handlers_text() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        assert_eq!(ask(&server, "get=1\n\n"), fake.get);
        assert!(fake.sets().is_empty());
    }

    #[test]
    fn a_valid_set_reaches_the_handler_and_answers_0() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        let body = format!(
            "listen_port=51820\nreplace_peers=true\npublic_key={PEER_HEX}\n\
             endpoint=192.0.2.1:51820\nallowed_ip=10.9.0.0/24\n\n"
        );
        assert_eq!(ask(&server, &format!("set=1\n{body}")), "errno=0\n\n");
        assert_eq!(fake.sets(), [parse_set(&body).unwrap()]);
        // `\r\n` line ends in the request, as Go's line scanner takes them (not on the
        // operation line, which wireguard-go matches exactly).
        let crlf = "set=1\nlisten_port=1\r\n\r\n";
        assert_eq!(ask(&server, crlf), "errno=0\n\n");
        assert_eq!(fake.sets()[1], parse_set("listen_port=1\n").unwrap());
    }

    #[test]
    fn a_refused_set_answers_the_handlers_errno_negated() {
        let dir = TempDir::new();
        let fake = Arc::new(Fake {
            refuse: Some(libc::EADDRINUSE),
            ..Arc::into_inner(Fake::new()).unwrap()
        });
        let server = start(&dir, fake.clone());
        assert_eq!(
            ask(&server, "set=1\nlisten_port=9\n\n"),
            format!("errno={}\n\n", -libc::EADDRINUSE)
        );
        assert_eq!(fake.sets().len(), 1);
        assert_eq!(status_of(22), -22);
        assert_eq!(status_of(-22), -22);
        assert_eq!(status_of(0), -55);
    }

    #[test]
    fn a_bad_set_answers_the_parse_errors_errno_and_applies_nothing() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        let cases = [
            (
                "set=1\nlisten_port=51820\nlisten_port=x\n\n",
                ErrorCode::Invalid,
            ),
            (
                "set=1\nlisten_port=51820\nno equals sign\n\n",
                ErrorCode::Protocol,
            ),
            ("set=1\nallowed_ip=10.0.0.0/8\n\n", ErrorCode::Invalid),
        ];
        for (text, code) in cases {
            assert_eq!(ask(&server, text), format_status(code.errno()), "{text:?}");
        }
        assert!(fake.sets().is_empty());
    }

    #[test]
    fn an_over_long_line_answers_eio_and_closes() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        let stream = connect(&server);
        let long = format!(
            "set=1\nlisten_port=1\nendpoint={}\n\nget=1\n\n",
            "1".repeat(MAX_LINE_BYTES)
        );
        (&stream).write_all(long.as_bytes()).unwrap();
        let mut reader = BufReader::new(&stream);
        assert_eq!(answer(&mut reader), format_status(ErrorCode::Io.errno()));
        assert!(closed(&mut reader));
        assert!(fake.sets().is_empty());
        // A line of exactly MAX_LINE_BYTES is read (and then refused by the parser).
        let longest = format!("set=1\nendpoint={}\n\n", "1".repeat(MAX_LINE_BYTES - 9));
        assert_eq!(
            ask(&server, &longest),
            format_status(ErrorCode::Invalid.errno())
        );
    }

    #[test]
    fn operations_follow_one_another_on_one_connection() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        let stream = connect(&server);
        let mut reader = BufReader::new(&stream);
        // One at a time, as a client that waits for each answer.
        (&stream).write_all(b"get=1\n\n").unwrap();
        assert_eq!(answer(&mut reader), fake.get);
        (&stream).write_all(b"set=1\nlisten_port=2\n\n").unwrap();
        assert_eq!(answer(&mut reader), "errno=0\n\n");
        // All in one write: what follows a set's empty line is the next operation.
        (&stream)
            .write_all(b"set=1\nlisten_port=3\n\nget=1\n\nset=1\nfwmark=x\n\n")
            .unwrap();
        assert_eq!(answer(&mut reader), "errno=0\n\n");
        assert_eq!(answer(&mut reader), fake.get);
        assert_eq!(
            answer(&mut reader),
            format_status(ErrorCode::Invalid.errno())
        );
        assert_eq!(fake.sets().len(), 2);
    }

    #[test]
    fn get_followed_by_another_byte_answers_einval_and_goes_on() {
        // wireguard-go's IpcHandle: it reads one byte after `get=1\n`, answers EINVAL for
        // anything but a newline, and reads the next operation from the byte after it.
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        let stream = connect(&server);
        (&stream).write_all(b"get=1\nxget=1\n\n").unwrap();
        let mut reader = BufReader::new(&stream);
        assert_eq!(
            answer(&mut reader),
            format_status(ErrorCode::Invalid.errno())
        );
        assert_eq!(answer(&mut reader), fake.get);
    }

    #[test]
    fn an_unknown_operation_closes_the_connection_unanswered() {
        let dir = TempDir::new();
        let server = start(&dir, Fake::new());
        for text in ["hello=1\n", "get=1\r\n\r\n", "set=2\n\n", "get=1 \n\n"] {
            let stream = connect(&server);
            (&stream).write_all(text.as_bytes()).unwrap();
            assert!(closed(&mut &stream), "{text:?}");
        }
    }

    #[test]
    fn a_set_cut_short_by_eof_answers_eio_and_applies_nothing() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        for text in ["set=1\nreplace_peers=true\n", "set=1\nlisten_po"] {
            let stream = connect(&server);
            (&stream).write_all(text.as_bytes()).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut reader = BufReader::new(&stream);
            assert_eq!(answer(&mut reader), format_status(ErrorCode::Io.errno()));
            assert!(closed(&mut reader));
        }
        assert!(fake.sets().is_empty());
    }

    #[test]
    fn the_socket_is_0600_in_a_directory_made_0755() {
        let dir = TempDir::new();
        let server = start(&dir, Fake::new());
        let socket = fs::symlink_metadata(server.path()).unwrap();
        assert!(socket.file_type().is_socket());
        assert_eq!(socket.mode() & 0o7777, 0o600);
        // 0755 less the umask, as wireguard-go's MkdirAll.
        let made = fs::metadata(&dir.0).unwrap().mode() & 0o7777;
        assert_eq!(made & !0o755, 0, "{made:o}");
        // Only the socket is left: the staging directory is gone.
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["tp0.sock"]);
        drop(server);
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0);
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("tp0.sock");
        // A socket nobody listens on any more: what a killed process leaves.
        drop(UnixListener::bind(&path).unwrap());
        assert!(fs::symlink_metadata(&path).is_ok());
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        assert_eq!(ask(&server, "get=1\n\n"), fake.get);
    }

    #[test]
    fn removing_the_socket_file_tells_the_handler_and_a_drop_does_not() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        fs::remove_file(server.path()).unwrap();
        let until = Instant::now() + HANG_GUARD;
        while !fake.removed.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            fake.removed.load(Ordering::SeqCst),
            "not told in {HANG_GUARD:?}"
        );
        // The server's own removal, at its drop, is no news for the handler.
        let fake = Fake::new();
        drop(start(&dir, fake.clone()));
        assert!(!fake.removed.load(Ordering::SeqCst));
        drop(server);
    }

    #[test]
    fn a_live_socket_is_refused_and_keeps_serving() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        let e = UapiServer::start(&dir.0, "tp0", Fake::new()).unwrap_err();
        assert!(e.contains("another process serves tp0"), "{e}");
        assert_eq!(ask(&server, "get=1\n\n"), fake.get);
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_refused_and_kept() {
        let dir = TempDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(dir.0.join("tp0.sock"), "x").unwrap();
        let e = UapiServer::start(&dir.0, "tp0", Fake::new()).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(fs::read(dir.0.join("tp0.sock")).unwrap(), b"x");
    }

    #[test]
    fn names_that_are_not_one_file_are_refused() {
        let dir = TempDir::new();
        for name in ["", ".", "..", "a/b", "../x", "a\0b", "sixteen-bytes-xx"] {
            let e = UapiServer::start(&dir.0, name, Fake::new()).unwrap_err();
            assert!(e.contains("invalid interface name"), "{name:?}: {e}");
        }
        assert!(UapiServer::start(&dir.0, "fifteen-bytes-x", Fake::new()).is_ok());
    }

    /// Drops `server` on another thread and waits (up to the hang guard) for the drop to
    /// return.
    fn drop_returns(server: UapiServer) {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            drop(server);
            let _ = done.send(());
        });
        finished
            .recv_timeout(HANG_GUARD)
            .expect("dropping the server hung");
    }

    #[test]
    fn drop_returns_while_clients_hold_idle_connections() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        let path = server.path().to_owned();
        // One idle before any operation, one inside a set, one after a get.
        let idle = connect(&server);
        let mid_set = connect(&server);
        (&mid_set).write_all(b"set=1\nlisten_port=1\n").unwrap();
        let after_get = connect(&server);
        (&after_get).write_all(b"get=1\n\n").unwrap();
        assert_eq!(answer(&mut BufReader::new(&after_get)), fake.get);
        drop_returns(server);
        assert!(
            fs::symlink_metadata(&path).is_err(),
            "the socket file is left"
        );
        for stream in [&idle, &mid_set, &after_get] {
            assert!(closed(&mut &*stream));
        }
        assert!(fake.sets().is_empty());
    }

    #[test]
    fn a_silent_client_is_disconnected() {
        let dir = TempDir::new();
        let server = start(&dir, Fake::new());
        let silent = connect(&server);
        // Within IDLE_TIMEOUT (5 s) and the hang guard (10 s): EOF, not a read timeout.
        assert!(closed(&mut &silent));
    }

    #[test]
    fn clients_past_the_limit_wait_for_a_free_slot() {
        let dir = TempDir::new();
        let fake = Fake::new();
        let server = start(&dir, fake.clone());
        // MAX_CONNECTIONS clients that each did one get, so each is being served.
        let held: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let stream = connect(&server);
                (&stream).write_all(b"get=1\n\n").unwrap();
                assert_eq!(answer(&mut BufReader::new(&stream)), fake.get);
                stream
            })
            .collect();
        let waiting = connect(&server);
        (&waiting).write_all(b"get=1\n\n").unwrap();
        // A slot frees when one leaves (or at the latest when IDLE_TIMEOUT closes them).
        drop(held);
        assert_eq!(answer(&mut BufReader::new(&waiting)), fake.get);
    }

    fn hex(key: &Key) -> String {
        key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A device model behind the socket: `set` applies to a `UapiState`, `get` formats it.
    /// Port 9 is refused as a bind that failed would be.
    struct Model(Mutex<UapiState>);

    impl UapiHandler for Model {
        fn get(&self) -> String {
            format_get(&self.0.lock().unwrap(), &[])
        }

        fn set(&self, request: &SetRequest) -> Result<(), i32> {
            let mut state = self.0.lock().unwrap();
            let mut next = state.clone();
            next.apply(request).map_err(|e| e.errno())?;
            if next.listen_port() == 9 {
                return Err(libc::EADDRINUSE);
            }
            *state = next;
            Ok(())
        }
    }

    /// Why the `wg` test cannot run here, if it cannot.
    fn wg_problem() -> Option<String> {
        // SAFETY: geteuid takes nothing, cannot fail and touches no memory of ours.
        if unsafe { libc::geteuid() } != 0 {
            return Some(format!("needs root, to bind in {SOCKET_DIR}"));
        }
        if Command::new("wg").arg("--version").output().is_err() {
            return Some("needs wg (apt-get install wireguard-tools)".into());
        }
        None
    }

    fn wg(args: &[&str]) -> Result<String, String> {
        let out = Command::new("wg").args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.success() {
            true => Ok(text),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// The real `wg` against the real socket directory: `wg show` parses the core's `get`
    /// answer, and `wg set` (which turns base64 keys into hex) reaches the handler.
    ///
    /// `wg` looks only in /var/run/wireguard, so this binds there, under a name unique to
    /// this process. It needs root and wireguard-tools; without them it says on stderr that
    /// it was skipped (the default harness cannot mark a test ignored at run time, and this
    /// module is in the binary, out of reach of cli/tests' libtest-mimic list).
    #[test]
    fn wg_tool_shows_and_sets_through_the_socket() {
        if let Some(why) = wg_problem() {
            // Straight to stderr, past libtest's capture of `eprintln!`, so that the skip
            // shows in a plain `cargo test` run.
            let _ = writeln!(
                io::stderr(),
                "SKIPPED, NOT PASSED: wg_tool_shows_and_sets_through_the_socket {why}"
            );
            return;
        }
        // Clamped, as the core stores a private key, so that `wg` shows the same.
        let mut private = *Key::generate().as_bytes();
        private[0] &= 248;
        private[31] = (private[31] & 127) | 64;
        let private = Key::from_bytes(private);
        let peer = Key::generate().public_key();
        let mut state = UapiState::new();
        let initial = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nendpoint=192.0.2.1:51820\n\
             allowed_ip=10.8.0.0/24\n",
            hex(&private),
            hex(&peer)
        );
        state.apply(&parse_set(&initial).unwrap()).unwrap();
        let model = Arc::new(Model(Mutex::new(state)));
        let name = format!("tpuapi{}", std::process::id());
        let server = UapiServer::start(Path::new(SOCKET_DIR), &name, model.clone()).unwrap();

        let dump = wg(&["show", &name, "dump"]).unwrap();
        let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.len(), 2, "{dump}");
        assert_eq!(
            lines[0][..3],
            [
                private.to_base64().as_str(),
                private.public_key().to_base64().as_str(),
                "51820"
            ]
        );
        assert_eq!(lines[1][0], peer.to_base64());
        assert_eq!(lines[1][2..4], ["192.0.2.1:51820", "10.8.0.0/24"]);

        wg(&["set", &name, "listen-port", "1234"]).unwrap();
        assert_eq!(model.0.lock().unwrap().listen_port(), 1234);
        let other = Key::generate().public_key();
        wg(&[
            "set",
            &name,
            "peer",
            &other.to_base64(),
            "allowed-ips",
            "10.9.0.0/24",
        ])
        .unwrap();
        let added = model
            .0
            .lock()
            .unwrap()
            .peer(&other)
            .expect("the peer was added");
        assert_eq!(
            added.allowed_ips,
            ["10.9.0.0/24".parse::<ipnet::IpNet>().unwrap()]
        );
        let shown = wg(&["show", &name, "allowed-ips"]).unwrap();
        assert!(
            shown.contains(&format!("{}\t10.9.0.0/24", other.to_base64())),
            "{shown}"
        );

        // The handler's errno reaches wg's message.
        let e = wg(&["set", &name, "listen-port", "9"]).unwrap_err();
        assert!(e.contains("Address already in use"), "{e}");
        assert_eq!(model.0.lock().unwrap().listen_port(), 1234);

        let path = server.path().to_owned();
        drop(server);
        assert!(fs::symlink_metadata(&path).is_err());
    }
}
