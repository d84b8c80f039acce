//! Disk faults: damage what a node stored, the way a failing disk would.

use apsis_client::Session;
use std::io::{Read, Seek, SeekFrom, Write};

/// Flips one byte in the middle of `key`'s stored data in the first group of `session`: the
/// object is found through LOOKUP, whose reply names the blob file and the data's offset in it,
/// and the byte is changed in the file itself. A later read of that copy must fail with −EILSEQ, never return
/// the damaged data. Returns the file that was damaged. The object must be in the file already:
/// a backend with `sync = 0` writes it before acknowledging.
pub async fn corrupt_copy(session: &Session, key: &[u8]) -> std::io::Result<std::path::PathBuf> {
    let (_, l) = session
        .lookup(key)
        .await
        .map_err(|e| std::io::Error::other(format!("lookup before corrupting: {e}")))?;
    if l.info.size == 0 {
        return Err(std::io::Error::other(
            "an empty object has no data to corrupt",
        ));
    }
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&l.path).into_owned());
    let at = l.info.offset + l.info.size / 2;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&b)?;
    f.sync_data()?;
    Ok(path)
}
