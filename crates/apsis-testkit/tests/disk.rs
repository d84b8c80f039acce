//! The faulty disk itself: a passthrough until told to fail, then exactly the errors asked for.

use apsis_testkit::FaultyDisk;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;

fn mounted() -> Option<(tempfile::TempDir, FaultyDisk)> {
    if !apsis_testkit::process::is_root() {
        eprintln!("SKIPPED: FUSE mounts need root");
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let (backing, mnt) = (t.path().join("backing"), t.path().join("disk"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    match FaultyDisk::mount(&backing, &mnt) {
        Ok(d) => Some((t, d)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: FUSE unavailable: {e}");
            None
        }
        Err(e) => panic!("FUSE mount: {e}"),
    }
}

#[test]
fn passes_through_then_fails_on_demand() {
    let Some((t, disk)) = mounted() else { return };
    let dir = disk.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let p = dir.join("f");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"hello disk").unwrap();
    f.sync_all().unwrap();
    // The bytes are in the backing directory, and read back through the mount.
    assert_eq!(
        std::fs::read(t.path().join("backing/d/f")).unwrap(),
        b"hello disk"
    );
    let mut s = String::new();
    std::fs::File::open(&p)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hello disk");
    std::fs::rename(&p, dir.join("g")).unwrap();
    let g = dir.join("g");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&g)
        .unwrap();

    disk.fail_reads(true);
    let mut b = [0u8; 4];
    let e = f.read_at(&mut b, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    disk.fail_reads(false);
    f.read_exact_at(&mut b, 6).unwrap();
    assert_eq!(&b, b"disk");

    disk.fail_syncs(true);
    let e = f.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    disk.fail_syncs(false);
    f.sync_data().unwrap();

    disk.fail_writes(true);
    let e = f.write_at(b"x", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    disk.fail_writes(false);
    assert!(disk.injected_errors() >= 3);

    // Capacity: reservations count, the write past the capacity fails whole, statfs agrees.
    let used = disk.used_bytes();
    disk.set_capacity(Some(used + (1 << 20)));
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 512 << 10).unwrap();
    assert!(disk.used_bytes() >= 512 << 10);
    let st = rustix::fs::statvfs(disk.path()).unwrap();
    let free = st.f_bavail * st.f_frsize;
    assert!((400 << 10..=600 << 10).contains(&free), "free {free}");
    // Inside the reservation: room; past the capacity: ENOSPC and the file is unchanged.
    f.write_all_at(&vec![7u8; 100 << 10], 0).unwrap();
    let e = f.write_at(&vec![7u8; 2 << 20], 1 << 20).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
    assert_eq!(f.metadata().unwrap().len(), 100 << 10);
    disk.set_capacity(None);
    f.write_all_at(&vec![7u8; 2 << 20], 1 << 20).unwrap();
    drop(f);
    std::fs::remove_file(&g).unwrap();
    assert!(disk.used_bytes() < 4096, "{}", disk.used_bytes());
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
}
