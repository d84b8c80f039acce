//! Little-endian field readers and writers: every read is bounds-checked and fails with
//! [`ProtoError::Short`] instead of panicking.

use crate::ProtoError;

/// A cursor over a received buffer.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, pos: 0, what }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.remaining() < n {
            return Err(ProtoError::Short {
                what: self.what,
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    /// The next `N` bytes as a fixed-size array, borrowed: a structure of fixed layout is
    /// checked once, then read at constant offsets ([`le_u64`], [`le_u32`]) without a bounds
    /// check per field.
    pub fn fixed<const N: usize>(&mut self) -> Result<&'a [u8; N], ProtoError> {
        let s = self.take(N)?;
        // `take` returned exactly N bytes.
        s.try_into().map_err(|_| ProtoError::Short {
            what: self.what,
            need: N,
            have: s.len(),
        })
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn skip(&mut self, n: usize) -> Result<(), ProtoError> {
        self.take(n).map(|_| ())
    }
    /// Fails unless the whole buffer was consumed (Elliptics checks sizes exactly).
    pub fn finish(&self) -> Result<(), ProtoError> {
        if self.remaining() != 0 {
            return Err(ProtoError::Trailing {
                what: self.what,
                extra: self.remaining(),
            });
        }
        Ok(())
    }
}

/// The `M` bytes at byte `at` of a fixed-size structure (see [`Reader::fixed`]); with a
/// constant `at`, the bounds are checked when compiling.
#[inline]
pub fn array_at<const M: usize, const N: usize>(a: &[u8; N], at: usize) -> [u8; M] {
    let mut b = [0u8; M];
    b.copy_from_slice(&a[at..at + M]);
    b
}

/// The little-endian `u64` at byte `at` of a fixed-size structure.
#[inline]
pub fn le_u64<const N: usize>(a: &[u8; N], at: usize) -> u64 {
    u64::from_le_bytes(array_at(a, at))
}

/// The little-endian `u32` at byte `at` of a fixed-size structure.
#[inline]
pub fn le_u32<const N: usize>(a: &[u8; N], at: usize) -> u32 {
    u32::from_le_bytes(array_at(a, at))
}

/// Appends little-endian fields to a buffer.
pub trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_i32(&mut self, v: i32);
    fn put_u64(&mut self, v: u64);
    fn put(&mut self, b: &[u8]);
    fn zeros(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v)
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b)
    }
    fn zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0)
    }
}
