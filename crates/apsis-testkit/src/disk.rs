//! A disk that fails on demand: a FUSE filesystem, run by the test process, that passes every
//! operation through to a real directory and can instead answer EIO (reads, writes, fsyncs) or
//! ENOSPC (a capacity in bytes), the way a failing or full disk answers a server.
//!
//! The server under test is an unmodified `apsis server` process: it sees an ordinary
//! directory and gets the errors from the kernel, exactly where a real disk's errors reach it.
//! Files are opened with `FOPEN_DIRECT_IO`, so no read or write is answered from the page
//! cache behind the fault switch's back (and the blob engine, which cannot map such files,
//! reads with `pread`, so a read error is an error reply rather than SIGBUS).
//!
//! Capacity is accounted the way a filesystem does: a file takes `max(size, reserved)` bytes,
//! where `fallocate` reserves; a write or `fallocate` that would take more than the capacity
//! fails with ENOSPC and changes nothing; `statfs` reports the capacity and what is free.
//!
//! Needs root and `/dev/fuse` (the mount is a direct `mount(2)`, no libfuse or fusermount).

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Attributes are not cached by the kernel: every size it needs comes from the backing file.
const TTL: Duration = Duration::ZERO;

/// The switches a test turns; shared between the test and the filesystem thread.
#[derive(Default)]
struct Faults {
    reads: AtomicBool,
    writes: AtomicBool,
    syncs: AtomicBool,
    /// Bytes all files may take together; `u64::MAX` = the backing filesystem's own limit.
    capacity: AtomicU64,
    /// Errors injected so far (EIO or ENOSPC), so a test can tell its fault was met.
    injected: AtomicU64,
}

impl Faults {
    fn fail(&self, on: &AtomicBool) -> bool {
        let f = on.load(Ordering::Acquire);
        if f {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        f
    }
}

/// A mounted faulty disk; unmounted on drop (lazily, so a process still holding a file open
/// cannot keep the test from finishing).
pub struct FaultyDisk {
    mountpoint: PathBuf,
    faults: Arc<Faults>,
    used: Arc<Mutex<Usage>>,
    session: Option<fuser::BackgroundSession>,
}

impl FaultyDisk {
    /// Mounts a faulty view of the directory `backing` at `mountpoint` (both must exist).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<FaultyDisk> {
        let faults = Arc::new(Faults {
            capacity: AtomicU64::new(u64::MAX),
            ..Faults::default()
        });
        let used = Arc::new(Mutex::new(Usage::default()));
        let mut paths = HashMap::new();
        paths.insert(INodeNo::ROOT.0, PathBuf::new());
        let fs = PassFs {
            root: backing.canonicalize()?,
            root_ino: std::fs::metadata(backing)?.ino(),
            faults: faults.clone(),
            used: used.clone(),
            tables: Mutex::new(Tables {
                paths,
                files: HashMap::new(),
                next_fh: 1,
            }),
        };
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("apsis-faulty".into()),
            fuser::MountOption::RW,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &cfg)?;
        Ok(FaultyDisk {
            mountpoint: mountpoint.to_path_buf(),
            faults,
            used,
            session: Some(session),
        })
    }

    /// Where the faulty disk is seen (give this, or a directory in it, to the server).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Every read fails with EIO while `on`.
    pub fn fail_reads(&self, on: bool) {
        self.faults.reads.store(on, Ordering::Release);
    }

    /// Every write and `fallocate` fails with EIO while `on` (nothing is written).
    pub fn fail_writes(&self, on: bool) {
        self.faults.writes.store(on, Ordering::Release);
    }

    /// Every `fsync`/`fdatasync` (of files and directories) fails with EIO while `on`.
    pub fn fail_syncs(&self, on: bool) {
        self.faults.syncs.store(on, Ordering::Release);
    }

    /// Limits the bytes all files may take together (`None`: no limit of its own). Lowering
    /// it below what is used makes the disk full; raising it is an operator freeing space.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.faults
            .capacity
            .store(bytes.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Bytes the files take now (sizes and reservations).
    pub fn used_bytes(&self) -> u64 {
        self.used.lock().total
    }

    /// How many operations were failed on purpose so far.
    pub fn injected_errors(&self) -> u64 {
        self.faults.injected.load(Ordering::Relaxed)
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        // The session's own unmount finds nothing mounted; its thread ends with the connection.
        drop(self.session.take());
    }
}

/// Bytes each file takes, by backing inode.
#[derive(Default)]
struct Usage {
    by_ino: HashMap<u64, u64>,
    total: u64,
}

impl Usage {
    /// Sets a file's footprint (first sight: what the backing filesystem says it takes).
    fn set(&mut self, ino: u64, bytes: u64) {
        let old = self.by_ino.insert(ino, bytes).unwrap_or(0);
        self.total = self.total - old + bytes;
    }
    fn get(&self, ino: u64) -> Option<u64> {
        self.by_ino.get(&ino).copied()
    }
    fn forget(&mut self, ino: u64) {
        if let Some(b) = self.by_ino.remove(&ino) {
            self.total -= b;
        }
    }
}

struct Tables {
    /// FUSE inode → path relative to the backing root.
    paths: HashMap<u64, PathBuf>,
    /// Open files by handle, with the backing inode they belong to.
    files: HashMap<u64, (Arc<File>, u64)>,
    next_fh: u64,
}

struct PassFs {
    root: PathBuf,
    root_ino: u64,
    faults: Arc<Faults>,
    used: Arc<Mutex<Usage>>,
    tables: Mutex<Tables>,
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl PassFs {
    /// The FUSE inode for a backing inode (the root is always 1).
    fn fuse_ino(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            INodeNo::ROOT.0
        } else {
            ino
        }
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.tables
            .lock()
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn file(&self, fh: FileHandle) -> Result<(Arc<File>, u64), Errno> {
        self.tables
            .lock()
            .files
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn attr(&self, md: &std::fs::Metadata) -> FileAttr {
        let kind = if md.is_dir() {
            FileType::Directory
        } else if md.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        FileAttr {
            ino: INodeNo(self.fuse_ino(md.ino())),
            size: md.size(),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Records `rel` as the path of the inode `md` describes, and starts accounting its space.
    fn learn(&self, rel: PathBuf, md: &std::fs::Metadata) -> FileAttr {
        let a = self.attr(md);
        self.tables.lock().paths.insert(a.ino.0, rel);
        if md.is_file() {
            let mut u = self.used.lock();
            if u.get(md.ino()).is_none() {
                u.set(md.ino(), md.blocks() * 512);
            }
        }
        a
    }

    fn entry(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    /// Space check for making file `ino` take `end` bytes: ENOSPC (and nothing done) when
    /// that would pass the capacity. Returns the footprint to record once the operation worked.
    fn room_for(&self, ino: u64, end: u64) -> Result<u64, Errno> {
        let u = self.used.lock();
        let cur = u.get(ino).unwrap_or(0);
        if end <= cur {
            return Ok(cur);
        }
        let cap = self.faults.capacity.load(Ordering::Acquire);
        if u.total - cur + end > cap {
            self.faults.injected.fetch_add(1, Ordering::Relaxed);
            return Err(Errno::ENOSPC);
        }
        Ok(end)
    }

    fn grow(&self, ino: u64, footprint: u64) {
        let mut u = self.used.lock();
        if u.get(ino).unwrap_or(0) < footprint {
            u.set(ino, footprint);
        }
    }

    fn open_file(&self, path: &Path, flags: i32, create: Option<u32>) -> io::Result<File> {
        let mut o = std::fs::OpenOptions::new();
        match OpenFlags(flags).acc_mode() {
            OpenAccMode::O_RDONLY => o.read(true),
            OpenAccMode::O_WRONLY => o.write(true),
            OpenAccMode::O_RDWR => o.read(true).write(true),
        };
        if let Some(mode) = create {
            o.create(true).mode(mode);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            }
        }
        // Access mode and creation are handled above; the kernel already applied O_TRUNC and
        // the rest as separate requests or they do not matter to a passthrough.
        o.custom_flags(flags & libc::O_APPEND);
        o.open(path)
    }

    fn new_handle(&self, f: File, ino: u64) -> FileHandle {
        let mut t = self.tables.lock();
        let fh = t.next_fh;
        t.next_fh += 1;
        t.files.insert(fh, (Arc::new(f), ino));
        FileHandle(fh)
    }
}

impl Filesystem for PassFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let rel = self.entry(parent, name)?;
            let md = std::fs::symlink_metadata(self.full(&rel)).map_err(errno)?;
            Ok(self.learn(rel, &md))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = (|| {
            let md = match fh.map(|h| self.file(h)) {
                Some(Ok((f, _))) => f.metadata(),
                _ => std::fs::symlink_metadata(self.full(&self.rel(ino)?)),
            }
            .map_err(errno)?;
            Ok(self.attr(&md))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            let path = self.full(&self.rel(ino)?);
            if let Some(m) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m))
                    .map_err(errno)?;
            }
            if let Some(len) = size {
                if self.faults.fail(&self.faults.writes) {
                    return Err(Errno::EIO);
                }
                let f = match fh.map(|h| self.file(h)) {
                    Some(Ok((f, _))) => f,
                    _ => Arc::new(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(errno)?,
                    ),
                };
                let bino = f.metadata().map_err(errno)?.ino();
                let need = self.room_for(bino, len)?;
                f.set_len(len).map_err(errno)?;
                let mut u = self.used.lock();
                let cur = u.get(bino).unwrap_or(0);
                // Shrinking drops the blocks past the new end, reservations included.
                u.set(bino, if len < cur { len } else { need });
            }
            let md = std::fs::symlink_metadata(&path).map_err(errno)?;
            Ok(self.attr(&md))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let rel = self.entry(parent, name)?;
            let p = self.full(&rel);
            std::fs::create_dir(&p).map_err(errno)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !umask))
                .map_err(errno)?;
            let md = std::fs::symlink_metadata(&p).map_err(errno)?;
            Ok(self.learn(rel, &md))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let p = self.full(&self.entry(parent, name)?);
            let md = std::fs::symlink_metadata(&p).map_err(errno)?;
            std::fs::remove_file(&p).map_err(errno)?;
            if md.nlink() <= 1 {
                self.used.lock().forget(md.ino());
                self.tables.lock().paths.remove(&self.fuse_ino(md.ino()));
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .entry(parent, name)
            .and_then(|rel| std::fs::remove_dir(self.full(&rel)).map_err(errno))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let from = self.entry(parent, name)?;
            let to = self.entry(newparent, newname)?;
            let md = std::fs::symlink_metadata(self.full(&from)).map_err(errno)?;
            let replaced = std::fs::symlink_metadata(self.full(&to)).ok();
            std::fs::rename(self.full(&from), self.full(&to)).map_err(errno)?;
            if let Some(r) = replaced.filter(|r| r.nlink() <= 1 && r.ino() != md.ino()) {
                self.used.lock().forget(r.ino());
            }
            // Only files are renamed by the servers under test; a renamed directory's
            // children are found again by lookup.
            self.tables.lock().paths.insert(self.fuse_ino(md.ino()), to);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let p = self.full(&self.rel(ino)?);
            let f = self.open_file(&p, flags.0, None).map_err(errno)?;
            let bino = f.metadata().map_err(errno)?.ino();
            Ok(self.new_handle(f, bino))
        })();
        match r {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let rel = self.entry(parent, name)?;
            let p = self.full(&rel);
            let f = self
                .open_file(&p, flags, Some(mode & !umask))
                .map_err(errno)?;
            let md = f.metadata().map_err(errno)?;
            let a = self.learn(rel, &md);
            Ok((a, self.new_handle(f, md.ino())))
        })();
        match r {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = (|| {
            if self.faults.fail(&self.faults.reads) {
                return Err(Errno::EIO);
            }
            let (f, _) = self.file(fh)?;
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(n);
            Ok(buf)
        })();
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            if self.faults.fail(&self.faults.writes) {
                return Err(Errno::EIO);
            }
            let (f, bino) = self.file(fh)?;
            let end = offset + data.len() as u64;
            let need = self.room_for(bino, end)?;
            f.write_all_at(data, offset).map_err(errno)?;
            self.grow(bino, need);
            Ok(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tables.lock().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            if self.faults.fail(&self.faults.syncs) {
                return Err(Errno::EIO);
            }
            let (f, _) = self.file(fh)?;
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
            .map_err(errno)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            if self.faults.fail(&self.faults.syncs) {
                return Err(Errno::EIO);
            }
            File::open(self.full(&self.rel(ino)?))
                .and_then(|d| d.sync_all())
                .map_err(errno)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = (|| {
            let p = self.full(&self.rel(ino)?);
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            for e in std::fs::read_dir(&p).map_err(errno)? {
                let e = e.map_err(errno)?;
                let md = e.metadata().map_err(errno)?;
                let kind = if md.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((self.fuse_ino(md.ino()), kind, e.file_name()));
            }
            Ok(entries)
        })();
        match r {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        let st = match rustix::fs::statvfs(&self.root) {
            Ok(s) => s,
            Err(e) => return reply.error(Errno::from_i32(e.raw_os_error())),
        };
        let cap = self.faults.capacity.load(Ordering::Acquire);
        let (blocks, free) = if cap == u64::MAX {
            let f = st.f_frsize.max(1);
            (st.f_blocks * f / BSIZE, st.f_bavail * f / BSIZE)
        } else {
            let used = self.used.lock().total;
            (cap / BSIZE, cap.saturating_sub(used) / BSIZE)
        };
        reply.statfs(
            blocks,
            free,
            free,
            st.f_files,
            st.f_ffree,
            BSIZE as u32,
            255,
            BSIZE as u32,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            if self.faults.fail(&self.faults.writes) {
                return Err(Errno::EIO);
            }
            let (f, bino) = self.file(fh)?;
            let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
            let need = if punch {
                0
            } else {
                self.room_for(bino, offset + length)?
            };
            let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
            rustix::fs::fallocate(&*f, flags, offset, length)
                .map_err(|e| Errno::from_i32(e.raw_os_error()))?;
            self.grow(bino, need);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
