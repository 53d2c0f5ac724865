//! Turning one source file into one stored image: decode (JPEG, or whatever
//! else hides behind a .JPEG name), convert to RGB, rescale the shorter side to
//! `side` with an antialiasing filter and keep the central `side x side` square.
//!
//! The paper (section 2) rescales the shorter side to 256 and crops the centre.
//! We resample only the source region that becomes the kept square, straight
//! to `side x side`: the same arithmetic as "resize the whole image, then
//! crop" (Pillow's resampler, like ours, clamps its kernel to the whole image
//! either way) without resampling pixels that the crop throws away.
//!
//! EXIF orientation is ignored, as in torchvision, TFDS and the ILSVRC tooling.

mod jpeg;

use fast_image_resize as fir;
use fir::pixels::U8x3 as Rgb;
use serde::{Deserialize, Serialize};

pub use jpeg::cmyk_to_rgb;
use jpeg::{JpegColor, JpegDecoder, Region};

/// Antialiasing filters, named after their Pillow equivalents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// Triangle (Pillow BILINEAR), support 1: torchvision's default for
    /// ImageNet and the cheapest antialiasing filter.
    Bilinear,
    /// Catmull-Rom (Pillow BICUBIC), support 2.
    Bicubic,
    /// Lanczos, a = 3 (Pillow LANCZOS), support 3.
    Lanczos3,
}

impl ResizeFilter {
    /// Half-width of the kernel in output pixels, widened by the scale when
    /// downsampling (as Pillow and fast_image_resize do).
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos3 => 3.0,
        }
    }

    fn fir(self) -> fir::FilterType {
        match self {
            Self::Bilinear => fir::FilterType::Bilinear,
            Self::Bicubic => fir::FilterType::CatmullRom,
            Self::Lanczos3 => fir::FilterType::Lanczos3,
        }
    }
}

/// How the stored image is made from the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreprocessOptions {
    /// Side of the stored square (256 in the paper).
    pub side: usize,
    pub filter: ResizeFilter,
    /// Let libjpeg-turbo decode large JPEGs at 1/2, 1/4 or 1/8 scale (DCT
    /// scaling), but only while the result is still at least twice `side`:
    /// the DCT reduction then removes only detail that the antialiasing filter
    /// would remove anyway, so output stays within Pillow parity, at a fraction
    /// of the decode and resize cost of very large photos.
    pub dct_scaling: bool,
    /// Files with more pixels than this are refused (decompression bombs);
    /// bounds the memory one decode can take.
    pub max_pixels: u64,
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        Self {
            side: 256,
            filter: ResizeFilter::Bilinear,
            dct_scaling: true,
            // Pillow's DecompressionBombError threshold.
            max_pixels: 178_956_970,
        }
    }
}

/// Why a file could not become an image. Every variant is a reason to skip the
/// file, never to stop a run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not an image (content is not JPEG, PNG or another known format)")]
    NotAnImage,
    #[error("unsupported image format {0}")]
    Unsupported(String),
    #[error("image of {width}x{height} pixels is larger than the limit of {limit} pixels")]
    TooLarge { width: u64, height: u64, limit: u64 },
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("corrupt image: {0}")]
    Jpeg(#[from] jpeg::JpegError),
}

/// Decodes and resamples; holds the scratch buffers of one thread.
pub struct Preprocessor {
    options: PreprocessOptions,
    /// Decode JPEGs only where the resampler reads (always, but in the
    /// test that shows it changes nothing).
    regions: bool,
    resizer: fir::Resizer,
    decoded: Vec<u8>,
    rgb: Vec<u8>,
}

impl Preprocessor {
    pub fn new(options: PreprocessOptions) -> Self {
        Self {
            options,
            regions: true,
            resizer: fir::Resizer::new(),
            decoded: Vec::new(),
            rgb: Vec::new(),
        }
    }

    pub fn options(&self) -> &PreprocessOptions {
        &self.options
    }

    /// Bytes of one output image.
    pub fn output_len(&self) -> usize {
        self.options.side * self.options.side * 3
    }

    /// Decodes `file` (the whole file's bytes) and writes the stored image,
    /// RGB HWC, into `out` (`output_len()` bytes).
    pub fn process(&mut self, file: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
        assert_eq!(out.len(), self.output_len(), "output buffer size");
        let decoded = match sniff(file)? {
            Format::Jpeg => self.decode_jpeg(file)?,
            Format::Other => self.decode_other(file)?,
        };
        self.resample_centre(&decoded, out)
    }

    /// Decodes, at a DCT scale when the photo is large, only the part of
    /// the image that the resampler reads.
    fn decode_jpeg(&mut self, file: &[u8]) -> Result<Decoded, DecodeError> {
        // A fresh TurboJPEG handle for every file (0.15 us). Its header call
        // returns success without touching the stored size when the stream
        // ends before a frame header (a file cut off after its first
        // marker): a reused handle then reported the previous file's size,
        // and the broken file was stored with the previous file's pixels.
        let mut jpeg = JpegDecoder::new()?;
        let header = jpeg.read_header(file)?;
        check_size(header.width, header.height, self.options.max_pixels)?;
        let denom = dct_denominator(&self.options, header.width.min(header.height));
        let scaled = header.scaled(denom);
        let needed = SourceBox::centre((header.width, header.height), scaled, self.options.side);
        let imcu = header.imcu_width(denom).filter(|_| self.regions);
        let region = imcu.and_then(|imcu| needed.region(scaled, self.margin(&needed), imcu));
        let target = if header.color == JpegColor::Cmyk {
            &mut self.decoded
        } else {
            &mut self.rgb
        };
        let size = jpeg.decode(file, &header, denom, region, target)?;
        if header.color == JpegColor::Cmyk {
            cmyk_to_rgb(&self.decoded, &mut self.rgb);
        }
        let origin = region.map_or((0, 0), |r| (r.x, r.y));
        Ok(Decoded {
            size,
            needed: needed.moved_by(origin),
        })
    }

    /// Pixels beyond the needed box that must be decoded too: the
    /// resampler's kernel reaches `support x scale` past the box edges.
    /// Two more keep clear of the region's own edge columns, where
    /// libjpeg's chroma upsampling sees no neighbour.
    fn margin(&self, needed: &SourceBox) -> usize {
        let scale = (needed.w / self.options.side as f64).max(1.0);
        (self.options.filter.support() * scale).ceil() as usize + 2
    }

    /// PNG (a PNG named .JPEG exists in ILSVRC-2012 train) and anything else
    /// the `image` crate reads, through Pillow's `convert("RGB")` semantics:
    /// grey is replicated, alpha dropped.
    fn decode_other(&mut self, file: &[u8]) -> Result<Decoded, DecodeError> {
        let format = image::guess_format(file).map_err(|_| DecodeError::NotAnImage)?;
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(file), format);
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.options.max_pixels.saturating_mul(8));
        reader.limits(limits);
        let decoded = reader.decode().map_err(|e| match e {
            image::ImageError::Unsupported(_) => {
                DecodeError::Unsupported(format!("{format:?}").to_uppercase())
            }
            image::ImageError::Limits(_) => DecodeError::TooLarge {
                width: 0,
                height: 0,
                limit: self.options.max_pixels,
            },
            other => DecodeError::Corrupt(other.to_string()),
        })?;
        let (w, h) = (decoded.width() as usize, decoded.height() as usize);
        check_size(w, h, self.options.max_pixels)?;
        self.rgb = decoded.into_rgb8().into_raw();
        Ok(Decoded {
            size: (w, h),
            needed: SourceBox::centre((w, h), (w, h), self.options.side),
        })
    }

    /// Resamples the box of the decoded pixels (in `self.rgb`) that becomes
    /// the stored square.
    fn resample_centre(&mut self, decoded: &Decoded, out: &mut [u8]) -> Result<(), DecodeError> {
        let side = self.options.side as u32;
        let (w, h) = decoded.size;
        // Typed views (RGB, 3 x u8): `Resizer::resize` on untyped images
        // would compile every pixel type's SIMD convolutions into this crate
        // (over half of its code) to pick one of them at run time.
        let src = fir::images::TypedImageRef::<Rgb>::from_buffer(w as u32, h as u32, &self.rgb)
            .map_err(|e| DecodeError::Corrupt(format!("decoded buffer: {e}")))?;
        let mut dst = fir::images::TypedImage::<Rgb>::from_buffer(side, side, out)
            .map_err(|e| DecodeError::Corrupt(format!("output buffer: {e}")))?;
        let needed = decoded.needed;
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(self.options.filter.fir()))
            .crop(needed.x, needed.y, needed.w, needed.h);
        self.resizer
            .resize_typed(&src, &mut dst, &options)
            .map_err(|e| DecodeError::Corrupt(format!("resize: {e}")))
    }
}

/// What `self.rgb` holds after decoding: `size` pixels (the whole image, or
/// the region of it that was decoded), and the box of them that becomes the
/// stored square.
#[derive(Debug, Clone, Copy)]
struct Decoded {
    size: Size,
    needed: SourceBox,
}

/// The box of the decoded image that becomes the stored square, in decoded
/// pixels (fractional after DCT scaling).
#[derive(Debug, Clone, Copy, PartialEq)]
struct SourceBox {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl SourceBox {
    fn centre(source: Size, (w, h): Size, side: usize) -> Self {
        let crop = CentreCrop::new(source, side);
        let (sx, sy) = (
            w as f64 / crop.resized.0 as f64,
            h as f64 / crop.resized.1 as f64,
        );
        Self {
            x: crop.offset.0 as f64 * sx,
            y: crop.offset.1 as f64 * sy,
            w: side as f64 * sx,
            h: side as f64 * sy,
        }
    }

    /// The same box, seen from a region that starts at `origin`.
    fn moved_by(self, (x, y): (usize, usize)) -> Self {
        Self {
            x: self.x - x as f64,
            y: self.y - y as f64,
            ..self
        }
    }

    /// The region to decode: from `margin` pixels left of, right of and
    /// above this box (within the image, the left edge moved down to a
    /// multiple of `imcu`) to the image's last row. None when that is the
    /// whole image.
    fn region(&self, (w, h): Size, margin: usize, imcu: usize) -> Option<Region> {
        let m = margin as f64;
        let left = ((self.x - m).floor().max(0.0) as usize) / imcu * imcu;
        let top = (self.y - m).floor().max(0.0) as usize;
        let right = ((self.x + self.w + m).ceil() as usize).min(w);
        // To the last row, whatever the box: libjpeg stops reading after a
        // region's last row, and would no longer see a file cut short below
        // it. Pillow refuses truncated files, and so do we. (Stopping early
        // would save ~1% more.)
        let bottom = h;
        let region = Region {
            x: left,
            y: top,
            w: right.saturating_sub(left),
            h: bottom.saturating_sub(top),
        };
        (region != Region { x: 0, y: 0, w, h }).then_some(region)
    }
}

/// The conventional geometry, in pixels of the rescaled image: the shorter
/// side becomes `side`, the longer `floor(long * side / short)` (torchvision's
/// `Resize`), and the crop starts at `floor((long' - side) / 2)` (Pillow's
/// `ImageOps.fit`, and torchvision's `CenterCrop` but for its round-half-even).
/// Keeping to whole pixels here is what makes our output match "resize, then
/// crop" in Pillow; an exact centre would sit half a pixel off whenever the
/// leftover is odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CentreCrop {
    /// Size of the rescaled image (width, height).
    pub resized: (usize, usize),
    /// Top-left corner of the kept square in the rescaled image (x, y).
    pub offset: (usize, usize),
}

impl CentreCrop {
    pub fn new((w, h): (usize, usize), side: usize) -> Self {
        let long =
            |long: usize, short: usize| ((long as u64 * side as u64) / short as u64) as usize;
        let resized = if w >= h {
            (long(w, h), side)
        } else {
            (side, long(h, w))
        };
        let offset = ((resized.0 - side) / 2, (resized.1 - side) / 2);
        Self { resized, offset }
    }
}

/// (width, height) in pixels.
type Size = (usize, usize);

enum Format {
    Jpeg,
    Other,
}

/// Decides by content, never by file name: ILSVRC-2012 holds a PNG and
/// CMYK JPEGs behind .JPEG names.
fn sniff(file: &[u8]) -> Result<Format, DecodeError> {
    match file {
        [] => Err(DecodeError::Empty),
        [0xFF, 0xD8, 0xFF, ..] => Ok(Format::Jpeg),
        _ => Ok(Format::Other),
    }
}

/// The largest power-of-two DCT reduction that leaves the shorter side at
/// least twice the output side (1 when DCT scaling is off).
fn dct_denominator(options: &PreprocessOptions, short_side: usize) -> usize {
    if !options.dct_scaling {
        return 1;
    }
    let floor = 2 * options.side;
    [8, 4, 2]
        .into_iter()
        .find(|&d| short_side.div_ceil(d) >= floor)
        .unwrap_or(1)
}

fn check_size(w: usize, h: usize, limit: u64) -> Result<(), DecodeError> {
    let pixels = w as u64 * h as u64;
    if pixels > limit {
        return Err(DecodeError::TooLarge {
            width: w as u64,
            height: h as u64,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encode png");
        bytes
    }

    fn encode_jpeg(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        let mut bytes = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        img.write_with_encoder(encoder).expect("encode jpeg");
        bytes
    }

    fn run(file: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut pre = Preprocessor::new(PreprocessOptions {
            side: 16,
            ..Default::default()
        });
        let mut out = vec![0; pre.output_len()];
        pre.process(file, &mut out).map(|_| out)
    }

    #[test]
    fn decoding_only_the_needed_region_changes_no_output_byte() {
        let texture = |x: u32, y: u32| {
            let v = (x * 7 + y * 13) ^ (x * y / 5);
            [v as u8, (v >> 2) as u8 ^ (x as u8), (y * 3) as u8]
        };
        // Landscape and portrait, odd sizes, upscaled (short side < 256),
        // square, and large enough for DCT scaling (1/2 and 1/4).
        let sizes = [
            (500, 375),
            (375, 500),
            (333, 257),
            (401, 299),
            (200, 150),
            (300, 300),
            (1100, 1030),
            (2200, 2050),
        ];
        for (w, h) in sizes {
            let file = encode_jpeg(w, h, texture);
            let options = PreprocessOptions::default();
            let mut whole = Preprocessor::new(options);
            whole.regions = false;
            let mut part = Preprocessor::new(options);
            let (mut a, mut b) = (vec![0; whole.output_len()], vec![0; part.output_len()]);
            whole.process(&file, &mut a).expect("whole");
            part.process(&file, &mut b).expect("region");
            assert!(a == b, "{w}x{h}: region decode differs");
        }
    }

    #[test]
    fn the_region_covers_the_kernel_reach_and_starts_on_an_imcu() {
        for (source, imcu) in [((500, 375), 16), ((375, 500), 16), ((333, 300), 8)] {
            let needed = SourceBox::centre(source, source, 256);
            let margin = 4;
            let r = needed.region(source, margin, imcu).expect("a part");
            assert_eq!(r.x % imcu, 0, "{source:?}");
            assert!(
                r.x as f64 <= (needed.x - margin as f64).max(0.0),
                "{source:?}"
            );
            assert!(
                r.y as f64 <= (needed.y - margin as f64).max(0.0),
                "{source:?}"
            );
            let right = (needed.x + needed.w + margin as f64).min(source.0 as f64);
            assert!(
                (r.x + r.w) as f64 >= right && r.x + r.w <= source.0,
                "{source:?}"
            );
            assert_eq!(r.y + r.h, source.1, "{source:?}: down to the last row");
        }
        // A nearly square photo needs all of itself.
        let needed = SourceBox::centre((260, 258), (260, 258), 256);
        assert_eq!(needed.region((260, 258), 4, 16), None);
    }

    #[test]
    fn a_file_cut_short_below_the_needed_rows_is_still_refused() {
        // Portrait: the stored square needs rows ~62..437 of 500; cut the
        // file where its last rows would be.
        let file = encode_jpeg(375, 500, |x, y| {
            [(x ^ y) as u8, (x * 3) as u8, (y * 5) as u8]
        });
        let cut = &file[..file.len() * 97 / 100];
        let err = run(cut).expect_err("truncated");
        assert!(
            matches!(&err, DecodeError::Jpeg(jpeg::JpegError::Truncated(_))),
            "{err:?}"
        );
    }

    #[test]
    fn a_broken_jpeg_after_a_good_one_is_still_refused() {
        // One decoder for both, as a worker uses it: nothing of the good
        // file's header may carry over to the broken one.
        let mut pre = Preprocessor::new(PreprocessOptions {
            side: 16,
            ..Default::default()
        });
        let mut out = vec![0; pre.output_len()];
        let good = encode_jpeg(40, 30, |_, _| [10, 200, 77]);
        pre.process(&good, &mut out).expect("good file");
        let broken = b"\xFF\xD8\xFF\xE0 nothing more";
        let err = pre.process(broken, &mut out).expect_err("broken file");
        assert!(matches!(err, DecodeError::Jpeg(_)), "{err:?}");
    }

    #[test]
    fn a_flat_colour_stays_flat_after_resampling() {
        let out = run(&encode_png(40, 30, |_, _| [10, 200, 77])).expect("decode");
        assert!(out.chunks(3).all(|p| p == [10, 200, 77]));
    }

    #[test]
    fn only_the_central_square_is_kept() {
        // Left and right thirds red, centre 30x30 square green: the output
        // (from the central 30x30) must be all green.
        let out = run(&encode_png(90, 30, |x, _| {
            if (30..60).contains(&x) {
                [0, 255, 0]
            } else {
                [255, 0, 0]
            }
        }))
        .expect("decode");
        // The kernel reaches one source pixel past the square; the border
        // output pixels may see a trace of red, the rest must be pure green.
        for y in 1..15 {
            for x in 1..15 {
                let p = &out[(y * 16 + x) * 3..][..3];
                assert_eq!(p, [0, 255, 0], "pixel {x},{y}");
            }
        }
    }

    #[test]
    fn jpeg_and_png_of_the_same_picture_agree() {
        let f = |x: u32, y: u32| [(x * 4) as u8, (y * 4) as u8, 128];
        let from_png = run(&encode_png(64, 48, f)).expect("png");
        let from_jpeg = run(&encode_jpeg(64, 48, f)).expect("jpeg");
        let mad: f64 = from_png
            .iter()
            .zip(&from_jpeg)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / from_png.len() as f64;
        assert!(mad < 2.0, "mean abs difference {mad}");
    }

    #[test]
    fn bad_inputs_get_their_own_reasons() {
        assert_eq!(run(b""), Err(DecodeError::Empty));
        assert_eq!(run(b"hello, I am text"), Err(DecodeError::NotAnImage));
        let jpeg = encode_jpeg(64, 64, |x, y| [x as u8, y as u8, 0]);
        let err = run(&jpeg[..jpeg.len() / 2]).expect_err("truncated");
        assert!(
            matches!(&err, DecodeError::Jpeg(jpeg::JpegError::Truncated(_))),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
        let png = encode_png(8, 8, |_, _| [0, 0, 0]);
        assert!(matches!(
            run(&png[..png.len() - 20]),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn centre_crop_geometry_is_the_conventional_one() {
        // 500x375: long side floor(500*256/375) = 341, offset floor(85/2) = 42.
        let c = CentreCrop::new((500, 375), 256);
        assert_eq!(
            c,
            CentreCrop {
                resized: (341, 256),
                offset: (42, 0)
            }
        );
        let c = CentreCrop::new((300, 1000), 256);
        assert_eq!(
            c,
            CentreCrop {
                resized: (256, 853),
                offset: (0, 298)
            }
        );
        let c = CentreCrop::new((56, 56), 256);
        assert_eq!(
            c,
            CentreCrop {
                resized: (256, 256),
                offset: (0, 0)
            }
        );
    }

    #[test]
    fn dct_scaling_keeps_a_two_fold_antialiasing_margin() {
        let options = PreprocessOptions::default();
        assert_eq!(dct_denominator(&options, 375), 1);
        assert_eq!(dct_denominator(&options, 1022), 1);
        assert_eq!(dct_denominator(&options, 1024), 2);
        assert_eq!(dct_denominator(&options, 2048), 4);
        assert_eq!(dct_denominator(&options, 5000), 8);
    }

    #[test]
    fn cmyk_conversion_follows_pillow() {
        // Stored (inverted) values: white paper, full black, pure cyan ink.
        let mut rgb = Vec::new();
        cmyk_to_rgb(
            &[255, 255, 255, 255, 0, 0, 0, 0, 0, 255, 255, 255],
            &mut rgb,
        );
        assert_eq!(rgb, [255, 255, 255, 0, 0, 0, 0, 255, 255]);
    }
}
