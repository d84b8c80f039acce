//! Every byte the blob engine reads or writes goes through these two small traits, so tests
//! can inject crashes, torn writes, bit flips, full disks and failing fsyncs.
//!
//! - [`Device`]: one file, positional I/O (`read_at`, `write_at`, `sync`, `len`, `set_len`,
//!   `allocate`).
//! - [`Dir`]: a directory of devices (open, list, rename, remove, sync, free space).
//! - [`FileDir`]: the real thing, on a filesystem.
//! - [`SimDir`]: an in-memory directory that remembers which bytes were synced; `crash()`
//!   throws away, keeps, or tears each unsynced write, and can flip bits in torn regions.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file with positional I/O.
#[allow(clippy::len_without_is_empty)]
pub trait Device: Send + Sync {
    /// Fills `buf` from `offset`; a short file is `UnexpectedEof`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Writes all of `buf` at `offset` and makes that write durable, but not the rest of the
    /// file's unsynced writes (which a whole-file [`Device::sync`] would write back first:
    /// for a file of a GiB of dirty pages, half a second). The default is both.
    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.sync()
    }
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk space up to `len` bytes without changing the file's length, so a full
    /// disk is found before data is written, not half-way through a record.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Maps the first `len` bytes for reading (they may extend past the current end, for a
    /// file that will grow). `None` where the device cannot be mapped; readers then use
    /// [`Device::read_at`].
    fn map(&self, _len: u64) -> io::Result<Option<memmap2::Mmap>> {
        Ok(None)
    }
    /// Writes `bufs` back to back from `offset` (one system call where the device can).
    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
}

/// A directory of devices.
pub trait Dir: Send + Sync {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Device>>;
    fn list(&self) -> io::Result<Vec<String>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Bytes available to this process on the filesystem.
    fn free_space(&self) -> io::Result<u64>;
}

/// A real directory on a filesystem.
pub struct FileDir {
    path: PathBuf,
}

impl FileDir {
    /// Opens (creating if needed) a directory.
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileDir> {
        std::fs::create_dir_all(path.as_ref())?;
        Ok(FileDir {
            path: path.as_ref().to_path_buf(),
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct FileDevice {
    file: File,
}

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    /// `pwritev2` with `RWF_DSYNC`: the kernel writes back and waits for this range only
    /// (and what metadata reading it needs), as `O_DSYNC` would.
    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let (mut rest, mut at) = (buf, offset);
        while !rest.is_empty() {
            let slices = [std::io::IoSlice::new(rest)];
            match rustix::io::pwritev2(&self.file, &slices, at, rustix::io::ReadWriteFlags::DSYNC) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    rest = &rest[n..];
                    at += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                // Kernels before 4.7, or filesystems without per-write sync: both steps.
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
                    self.write_at(rest, at)?;
                    return self.sync();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut slices: Vec<std::io::IoSlice<'_>> =
            bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
        let mut rest: &mut [std::io::IoSlice<'_>] = &mut slices;
        let mut at = offset;
        while !rest.is_empty() {
            match rustix::io::pwritev(&self.file, rest, at) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n as u64;
                    std::io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
    fn map(&self, len: u64) -> io::Result<Option<memmap2::Mmap>> {
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: the blob engine reads mapped bytes only below a base's `flushed` mark:
        // bytes it wrote through this file, which it never truncates while the base is in
        // use. Other processes must not modify a backend's files while it runs (see
        // docs/durability.md); a disk read error while reading the map is SIGBUS.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(len as usize)
                .map(&self.file)?
        };
        Ok(Some(map))
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
            Ok(()) => Ok(()),
            // Filesystems without fallocate: the space is found at write time instead.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Dir for FileDir {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Device>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(self.path.join(name))?;
        Ok(Arc::new(FileDevice { file }))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            let e = e?;
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
    fn free_space(&self) -> io::Result<u64> {
        let st = rustix::fs::statvfs(&self.path)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

// ---------------------------------------------------------------------------------------
// Simulation
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct SimFile {
    /// What a reader sees now (the page cache).
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Writes since the last sync, in order.
    pending: Vec<PendingOp>,
    /// Space reserved by `allocate` (like fallocate with KEEP_SIZE).
    reserved: u64,
}

impl SimFile {
    /// Bytes this file takes on the simulated disk.
    fn footprint(&self) -> u64 {
        (self.current.len() as u64).max(self.reserved)
    }
}

#[derive(Default)]
struct SimState {
    files: BTreeMap<String, Arc<Mutex<SimFile>>>,
    /// After this many more writes, every write and sync fails (power is lost mid-operation).
    writes_until_power_loss: Option<u64>,
    powered_off: bool,
    /// Fail the next fsync (once) with EIO.
    fail_next_sync: bool,
    /// Total bytes the "disk" holds; writes past it fail with ENOSPC.
    capacity_bytes: Option<u64>,
    /// The durable-by-sync counter (for tests that check syncs happened).
    syncs: u64,
}

/// A simulated directory. Clones share the same state, so a test keeps one handle, gives
/// another to a backend, crashes it, and reopens the backend on what survived.
#[derive(Clone, Default)]
pub struct SimDir {
    state: Arc<Mutex<SimState>>,
}

struct SimDevice {
    name: String,
    file: Arc<Mutex<SimFile>>,
    dir: SimDir,
}

fn apply(buf: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*offset as usize..end].copy_from_slice(data);
        }
        PendingOp::SetLen(l) => buf.resize(*l as usize, 0),
    }
}

impl SimDir {
    pub fn new() -> SimDir {
        SimDir::default()
    }

    /// Power is lost after `n` more successful writes: later writes and syncs fail with EIO
    /// until [`SimDir::crash`].
    pub fn lose_power_after_writes(&self, n: u64) {
        self.state.lock().writes_until_power_loss = Some(n);
    }

    /// Power is lost now: every later write and sync fails until [`SimDir::crash`]. A test
    /// calls this before dropping a backend, so the drop cannot write anything more (the
    /// equivalent of `kill -9`).
    pub fn power_off(&self) {
        self.state.lock().powered_off = true;
    }

    /// The next fsync fails with EIO.
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
    }

    /// Limits the bytes all files may hold together; more is ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity_bytes = bytes;
    }

    /// How many fsyncs have completed.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Simulates a power failure: each unsynced write is kept, dropped, or torn (a random
    /// prefix kept, with random bit flips in the torn part when `flip_bits`). Afterwards
    /// every file holds only what survived, and power is back.
    pub fn crash(&self, rng: &mut impl FnMut(u64) -> u64, flip_bits: bool) {
        let mut st = self.state.lock();
        for f in st.files.values() {
            let mut f = f.lock();
            let mut img = f.durable.clone();
            let pending = std::mem::take(&mut f.pending);
            for op in &pending {
                match (op, rng(4)) {
                    (_, 0) => {} // dropped
                    (PendingOp::SetLen(_), _) => apply(&mut img, op),
                    (PendingOp::Write { .. }, 1 | 2) => apply(&mut img, op),
                    (PendingOp::Write { offset, data }, _) => {
                        // Torn: a prefix lands, maybe with flipped bits in it.
                        let keep = rng(data.len() as u64 + 1) as usize;
                        let mut part = data[..keep].to_vec();
                        if flip_bits && !part.is_empty() && rng(2) == 0 {
                            let i = rng(part.len() as u64) as usize;
                            part[i] ^= 1 << rng(8);
                        }
                        apply(
                            &mut img,
                            &PendingOp::Write {
                                offset: *offset,
                                data: part,
                            },
                        );
                    }
                }
            }
            f.durable = img.clone();
            f.current = img;
        }
        st.powered_off = false;
        st.writes_until_power_loss = None;
        st.fail_next_sync = false;
    }

    /// Flips one bit of durable data in `name` (bit rot).
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) {
        let st = self.state.lock();
        if let Some(f) = st.files.get(name) {
            let mut f = f.lock();
            if (offset as usize) < f.current.len() {
                f.current[offset as usize] ^= 1 << (bit % 8);
                f.durable = f.current.clone();
            }
        }
    }

    /// Names and current lengths of all files.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.state
            .lock()
            .files
            .iter()
            .map(|(n, f)| (n.clone(), f.lock().current.len() as u64))
            .collect()
    }

    fn used_bytes(st: &SimState) -> u64 {
        st.files.values().map(|f| f.lock().footprint()).sum()
    }

    fn before_write(&self, growth: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.powered_off {
            return Err(io::Error::other("simulated power loss"));
        }
        if let Some(n) = st.writes_until_power_loss.as_mut() {
            if *n == 0 {
                st.powered_off = true;
                return Err(io::Error::other("simulated power loss"));
            }
            *n -= 1;
        }
        if let Some(cap) = st.capacity_bytes {
            if growth > 0 && SimDir::used_bytes(&st) + growth > cap {
                return Err(io::Error::from_raw_os_error(28));
            }
        }
        Ok(())
    }
}

impl Device for SimDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let f = self.file.lock();
        let end = offset as usize + buf.len();
        if end > f.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read past end", self.name),
            ));
        }
        buf.copy_from_slice(&f.current[offset as usize..end]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let growth = {
            let f = self.file.lock();
            (offset + buf.len() as u64).saturating_sub(f.footprint())
        };
        self.dir.before_write(growth)?;
        let mut f = self.file.lock();
        let op = PendingOp::Write {
            offset,
            data: buf.to_vec(),
        };
        apply(&mut f.current, &op);
        f.pending.push(op);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        {
            let mut st = self.dir.state.lock();
            if st.powered_off {
                return Err(io::Error::other("simulated power loss"));
            }
            if st.fail_next_sync {
                st.fail_next_sync = false;
                // Like Linux after a failed writeback: the dirty data may be gone.
                return Err(io::Error::from_raw_os_error(5));
            }
            st.syncs += 1;
        }
        let mut f = self.file.lock();
        f.durable = f.current.clone();
        f.pending.clear();
        Ok(())
    }
    /// The write becomes durable on its own: it is applied to what survives a crash, and
    /// cut out of the earlier unsynced writes it covers (a crash cannot bring their bytes
    /// back over it), which otherwise stay as unsynced as they were. With a truncation
    /// pending below its end, the whole file is synced instead (stronger, and simpler than
    /// modelling how the two would land).
    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let growth = {
            let f = self.file.lock();
            (offset + buf.len() as u64).saturating_sub(f.footprint())
        };
        self.dir.before_write(growth)?;
        let synced = {
            let mut st = self.dir.state.lock();
            let ok = !st.powered_off && !st.fail_next_sync;
            st.fail_next_sync = false;
            st.syncs += ok as u64;
            ok
        };
        let end = offset + buf.len() as u64;
        let op = PendingOp::Write {
            offset,
            data: buf.to_vec(),
        };
        let mut f = self.file.lock();
        apply(&mut f.current, &op);
        if !synced {
            // Written, not durable: as after a failed fsync.
            f.pending.push(op);
            return Err(io::Error::from_raw_os_error(5));
        }
        let truncating = f
            .pending
            .iter()
            .any(|p| matches!(p, PendingOp::SetLen(l) if *l < end));
        if truncating {
            f.durable = f.current.clone();
            f.pending.clear();
            return Ok(());
        }
        apply(&mut f.durable, &op);
        for p in std::mem::take(&mut f.pending) {
            match p {
                PendingOp::Write { offset: o, data }
                    if o < end && offset < o + data.len() as u64 =>
                {
                    // The part before and the part after this write stay unsynced.
                    let lo = (offset.max(o) - o) as usize;
                    let hi = (end.min(o + data.len() as u64) - o) as usize;
                    if lo > 0 {
                        let data = data[..lo].to_vec();
                        f.pending.push(PendingOp::Write { offset: o, data });
                    }
                    if hi < data.len() {
                        let data = data[hi..].to_vec();
                        f.pending.push(PendingOp::Write {
                            offset: o + hi as u64,
                            data,
                        });
                    }
                }
                p => f.pending.push(p),
            }
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.lock().current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.dir.before_write(0)?;
        let mut f = self.file.lock();
        let op = PendingOp::SetLen(len);
        apply(&mut f.current, &op);
        f.pending.push(op);
        Ok(())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        let st = self.dir.state.lock();
        if let Some(cap) = st.capacity_bytes {
            let cur = self.file.lock().footprint();
            if SimDir::used_bytes(&st) + len.saturating_sub(cur) > cap {
                return Err(io::Error::from_raw_os_error(28));
            }
        }
        let mut f = self.file.lock();
        f.reserved = f.reserved.max(len);
        Ok(())
    }
}

impl Dir for SimDir {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Device>> {
        let mut st = self.state.lock();
        let file = match st.files.get(name) {
            Some(f) => f.clone(),
            None if create => {
                if st.powered_off {
                    return Err(io::Error::other("simulated power loss"));
                }
                let f = Arc::new(Mutex::new(SimFile::default()));
                st.files.insert(name.to_string(), f.clone());
                f
            }
            None => return Err(io::Error::new(io::ErrorKind::NotFound, name.to_string())),
        };
        Ok(Arc::new(SimDevice {
            name: name.to_string(),
            file,
            dir: self.clone(),
        }))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().files.keys().cloned().collect())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.powered_off {
            return Err(io::Error::other("simulated power loss"));
        }
        st.files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.powered_off {
            return Err(io::Error::other("simulated power loss"));
        }
        let f = st
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        st.files.insert(to.to_string(), f);
        Ok(())
    }
    fn sync_dir(&self) -> io::Result<()> {
        if self.state.lock().powered_off {
            return Err(io::Error::other("simulated power loss"));
        }
        Ok(())
    }
    fn free_space(&self) -> io::Result<u64> {
        let st = self.state.lock();
        Ok(st
            .capacity_bytes
            .map(|c| c.saturating_sub(SimDir::used_bytes(&st)))
            .unwrap_or(u64::MAX / 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each unsynced write of the simulated crash dropped (0), kept (1 and 2) or torn (3).
    fn crash_all(d: &SimDir, fate: u64) {
        d.crash(&mut |n| fate.min(n - 1), false);
    }

    #[test]
    fn a_durable_write_survives_a_crash_and_earlier_writes_under_it_never_come_back() {
        for fate in 0..4 {
            let d = SimDir::new();
            let f = d.open("f", true).unwrap();
            f.write_at(&[1; 100], 0).unwrap();
            f.sync().unwrap();
            f.write_at(&[2; 100], 0).unwrap();
            f.write_at(&[3; 10], 200).unwrap();
            f.write_durable_at(&[9; 20], 40).unwrap();
            crash_all(&d, fate);
            let f = d.open("f", false).unwrap();
            let mut b = vec![0; 100];
            f.read_at(&mut b, 0).unwrap();
            assert_eq!(b[40..60], [9; 20], "fate {fate}");
            // The rest of the earlier write is as unsynced as before: gone, landed or torn.
            assert!(
                b[..40].iter().chain(&b[60..]).all(|&x| x == 1 || x == 2),
                "fate {fate}: {b:?}"
            );
            assert_eq!(f.len().unwrap() > 100, fate != 0, "fate {fate}");
        }
    }

    #[test]
    fn a_durable_write_to_a_file_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let d = FileDir::open(tmp.path()).unwrap();
        let f = d.open("f", true).unwrap();
        f.write_at(&[1; 8192], 0).unwrap();
        f.write_durable_at(&[7; 100], 4000).unwrap();
        let mut b = vec![0; 8192];
        f.read_at(&mut b, 0).unwrap();
        assert!(b[..4000].iter().chain(&b[4100..]).all(|&x| x == 1));
        assert_eq!(b[4000..4100], [7; 100]);
    }
}
