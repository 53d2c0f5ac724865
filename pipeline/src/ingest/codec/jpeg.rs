//! A thin, safe wrapper over the TurboJPEG 3 C API (libjpeg-turbo, vendored by
//! `turbojpeg-sys`).
//!
//! Why not the `turbojpeg` crate: we need two things it hides. First, libjpeg
//! reports recoverable problems as *warnings* after a complete decode, and we
//! must tell a truncated file (reject, as Pillow does) from, say, a few stray
//! bytes before a marker (accept, as Pillow does). Second, we want the error
//! code and text together. Both need the raw handle.

use std::ffi::CStr;

use turbojpeg_sys as tj;

/// Colour model of the coded JPEG data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegColor {
    /// YCbCr or RGB: decoded straight to RGB by libjpeg-turbo.
    Rgb,
    /// One channel; libjpeg-turbo replicates it to RGB.
    Gray,
    /// CMYK or YCCK (Adobe): decoded to CMYK, converted by us.
    Cmyk,
}

/// What the JPEG header says.
#[derive(Debug, Clone, Copy)]
pub struct JpegHeader {
    pub width: usize,
    pub height: usize,
    pub color: JpegColor,
    /// TurboJPEG's chroma subsampling code (`TJSAMP_*`; -1 when unknown).
    pub subsamp: i32,
}

impl JpegHeader {
    /// The image's size decoded at `1/denom` scale: libjpeg rounds scaled
    /// sizes up (jdiv_round_up).
    pub fn scaled(&self, denom: usize) -> (usize, usize) {
        (self.width.div_ceil(denom), self.height.div_ceil(denom))
    }

    /// Width of an iMCU (the columns of blocks decoded together) at
    /// `1/denom` scale: a decoded region must start at a multiple of it.
    /// None for subsamplings TurboJPEG does not name.
    pub fn imcu_width(&self, denom: usize) -> Option<usize> {
        // TurboJPEG's tjMCUWidth, by TJSAMP_* code: 444, 422, 420, gray,
        // 440, 411, 441.
        let full: usize = *[8, 16, 16, 8, 8, 32, 8].get(usize::try_from(self.subsamp).ok()?)?;
        Some(full.div_ceil(denom))
    }
}

/// Part of the (scaled) image to decode: columns `x..x + w`, rows `y..y + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Why libjpeg-turbo could not decode a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("libjpeg-turbo could not create a decompressor")]
    NoDecompressor,
    #[error("JPEG header has no image size")]
    NoSize,
    /// The data ran out: libjpeg would pad the rest with grey, which Pillow
    /// refuses ("image file is truncated"), and so do we.
    #[error("truncated JPEG ({0})")]
    Truncated(String),
    /// libjpeg-turbo's own message.
    #[error("{0}")]
    Library(String),
}

/// One libjpeg-turbo decompressor. Make one per file: a handle keeps the
/// last header it read when the next one has no frame header (see
/// `Preprocessor::decode_jpeg`).
pub struct JpegDecoder {
    handle: tj::tjhandle,
}

// SAFETY: a TurboJPEG handle holds no thread-local state; it may move between
// threads as long as it is used by one at a time, which `&mut self` ensures.
unsafe impl Send for JpegDecoder {}

impl JpegDecoder {
    pub fn new() -> Result<Self, JpegError> {
        // SAFETY: tj3Init has no preconditions; a null return means failure.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as libc::c_int) };
        if handle.is_null() {
            return Err(JpegError::NoDecompressor);
        }
        Ok(Self { handle })
    }

    /// Reads the header: size and colour model.
    pub fn read_header(&mut self, data: &[u8]) -> Result<JpegHeader, JpegError> {
        // SAFETY: handle is valid; data outlives the call.
        let rc = unsafe {
            tj::tj3DecompressHeader(self.handle, data.as_ptr(), data.len() as tj::size_t)
        };
        if rc != 0 && !self.last_was_warning() {
            return Err(JpegError::Library(self.error_text()));
        }
        let width = self.param(tj::TJPARAM_TJPARAM_JPEGWIDTH);
        let height = self.param(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
        if width <= 0 || height <= 0 {
            return Err(JpegError::NoSize);
        }
        let color = match self.param(tj::TJPARAM_TJPARAM_COLORSPACE) as u32 {
            tj::TJCS_TJCS_GRAY => JpegColor::Gray,
            tj::TJCS_TJCS_CMYK | tj::TJCS_TJCS_YCCK => JpegColor::Cmyk,
            _ => JpegColor::Rgb,
        };
        Ok(JpegHeader {
            width: width as usize,
            height: height as usize,
            color,
            subsamp: self.param(tj::TJPARAM_TJPARAM_SUBSAMP),
        })
    }

    /// Decodes at `1/denom` scale (denom in 1, 2, 4, 8) into `out`, which is
    /// resized to `w * h * channels` bytes: 3 (RGB) or 4 (CMYK), where w x h
    /// is the scaled image or, given one, the `region` of it (whose `x` is a
    /// multiple of `header.imcu_width(denom)`). Returns w x h. `read_header`
    /// must have been called on `data`.
    ///
    /// Outside a region libjpeg-turbo skips the IDCT, upsampling and colour
    /// conversion, and stops reading after its last row.
    pub fn decode(
        &mut self,
        data: &[u8],
        header: &JpegHeader,
        denom: usize,
        region: Option<Region>,
        out: &mut Vec<u8>,
    ) -> Result<(usize, usize), JpegError> {
        self.set_scale(denom)?;
        let (w, h) = match region {
            Some(r) => {
                self.set_region(r)?;
                (r.w, r.h)
            }
            None => header.scaled(denom),
        };
        let (format, channels) = match header.color {
            JpegColor::Cmyk => (tj::TJPF_TJPF_CMYK, 4),
            _ => (tj::TJPF_TJPF_RGB, 3),
        };
        // No clear(): libjpeg writes every byte, and zeroing the reused
        // buffer first cost ~1% of `pipeline shards`.
        out.resize(w * h * channels, 0);
        // SAFETY: out holds exactly pitch * h bytes; handle and data are valid.
        let rc = unsafe {
            tj::tj3Decompress8(
                self.handle,
                data.as_ptr(),
                data.len() as tj::size_t,
                out.as_mut_ptr(),
                (w * channels) as libc::c_int,
                format as libc::c_int,
            )
        };
        self.decode_outcome(rc)?;
        Ok((w, h))
    }

    /// Decodes at `1/denom` scale from now on.
    fn set_scale(&mut self, denom: usize) -> Result<(), JpegError> {
        let factor = tj::tjscalingfactor {
            num: 1,
            denom: denom as libc::c_int,
        };
        // SAFETY: handle is valid; factor is one libjpeg-turbo supports (1/1..1/8).
        if unsafe { tj::tj3SetScalingFactor(self.handle, factor) } != 0 {
            return Err(JpegError::Library(self.error_text()));
        }
        Ok(())
    }

    /// Decodes only `region` of the scaled image at the next decode.
    fn set_region(&mut self, region: Region) -> Result<(), JpegError> {
        let crop = tj::tjregion {
            x: region.x as libc::c_int,
            y: region.y as libc::c_int,
            w: region.w as libc::c_int,
            h: region.h as libc::c_int,
        };
        // SAFETY: handle is valid and has read this file's header.
        if unsafe { tj::tj3SetCroppingRegion(self.handle, crop) } != 0 {
            return Err(JpegError::Library(self.error_text()));
        }
        Ok(())
    }

    /// Whether a decode that returned `rc` gave the whole image. A warning
    /// means the image was decoded in full, except when the data ran out:
    /// libjpeg then pads the rest with grey. Pillow refuses such files
    /// ("image file is truncated"), and so do we.
    fn decode_outcome(&mut self, rc: libc::c_int) -> Result<(), JpegError> {
        if rc == 0 {
            return Ok(());
        }
        let text = self.error_text();
        if text.contains("Premature end") {
            Err(JpegError::Truncated(text))
        } else if self.last_was_warning() {
            Ok(())
        } else {
            Err(JpegError::Library(text))
        }
    }

    fn param(&mut self, param: tj::TJPARAM) -> libc::c_int {
        // SAFETY: handle is valid; unknown params return -1, never UB.
        unsafe { tj::tj3Get(self.handle, param as libc::c_int) }
    }

    fn last_was_warning(&mut self) -> bool {
        // SAFETY: handle is valid.
        unsafe { tj::tj3GetErrorCode(self.handle) == tj::TJERR_TJERR_WARNING as libc::c_int }
    }

    fn error_text(&mut self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        let text = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle)) };
        text.to_string_lossy().into_owned()
    }
}

impl Drop for JpegDecoder {
    fn drop(&mut self) {
        // SAFETY: handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.handle) }
    }
}

/// CMYK as stored in the file (4 bytes a pixel) to RGB, exactly as Pillow's
/// `convert("RGB")` does it. Pillow assumes Adobe's convention for every
/// 4-channel JPEG (stored values are inverted ink, rawmode "CMYK;I"), then
/// computes R = (255 - K) - (C * (255 - K)) / 255 with its MULDIV255 rounding.
pub fn cmyk_to_rgb(cmyk: &[u8], rgb: &mut Vec<u8>) {
    rgb.clear();
    rgb.reserve(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let not_k = px[3] as u32; // stored inverted: 255 - K
        for &stored in &px[..3] {
            let ink = 255 - stored as u32;
            rgb.push((not_k - muldiv255(ink, not_k)) as u8);
        }
    }
}

/// Pillow's MULDIV255: a * b / 255, rounded, without a division.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}
