//! Runs the conformance suite against every backend configuration.

use apsis_storage::conformance::run_all;
use apsis_storage::*;
use std::sync::Arc;

#[test]
fn memory_backend_conforms() {
    run_all(&|| Box::new(MemoryBackend::new()));
}

#[test]
fn blob_backend_on_files_conforms() {
    let dirs = std::sync::Mutex::new(Vec::new());
    run_all(&|| {
        let d = tempfile::tempdir().unwrap();
        let b = BlobBackend::open_path(
            d.path(),
            BlobConfig {
                sync: -1,
                blob_size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        dirs.lock().unwrap().push(d);
        Box::new(b)
    });
}

#[test]
fn blob_backend_unbuffered_sync0_conforms() {
    run_all(&|| {
        let cfg = BlobConfig {
            sync: 0,
            write_buffer_bytes: 0,
            blob_size: 256 << 10,
            background: false,
            ..Default::default()
        };
        Box::new(BlobBackend::open(Arc::new(SimDir::new()), cfg).unwrap().0)
    });
}

#[test]
fn blob_backend_with_in_place_overwrite_conforms() {
    run_all(&|| {
        let cfg = BlobConfig {
            sync: -1,
            overwrite_in_place: true,
            blob_size: 1 << 16,
            background: false,
            ..Default::default()
        };
        Box::new(BlobBackend::open(Arc::new(SimDir::new()), cfg).unwrap().0)
    });
}

#[test]
fn blob_backend_on_files_unbuffered_conforms() {
    // Every record goes to the file in one vectored write, and reads come from the map.
    let dirs = std::sync::Mutex::new(Vec::new());
    run_all(&|| {
        let d = tempfile::tempdir().unwrap();
        let b = BlobBackend::open_path(
            d.path(),
            BlobConfig {
                sync: 0,
                write_buffer_bytes: 0,
                blob_size: 256 << 10,
                ..Default::default()
            },
        )
        .unwrap();
        dirs.lock().unwrap().push(d);
        Box::new(b)
    });
}
