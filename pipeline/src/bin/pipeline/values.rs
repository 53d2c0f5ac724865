//! The library's option enums as command-line values: the library has no
//! clap, so each is mirrored here (`pipeline::value_enum!`) with its help
//! text and turned into the library's own with `into()`.

pipeline::value_enum!(Split => pipeline::ingest::Split { Train, Val, });
pipeline::value_enum!(Mode => pipeline::loader::augment::Mode {
    /// Random crop, mirror and lighting.
    Train,
    /// The centre window.
    Center,
    /// Four corners and centre, and their mirrors, kept together per image.
    Tencrop,
});
pipeline::value_enum!(Output => pipeline::loader::Output {
    /// uint8 HWC crops plus each view's parameters.
    U8,
    /// float32 CHW with mean and lighting applied.
    F32,
});
pipeline::value_enum!(ReadMode => pipeline::format::shard::ReadMode {
    /// `map` while the shards fit in half of this machine's memory.
    Auto,
    /// Map each shard file: frames decompressed from the page cache.
    Map,
    /// Copy each frame out of the file with one pread.
    Pread,
});
pipeline::value_enum!(ResizeFilter => pipeline::ingest::codec::ResizeFilter {
    /// Triangle (Pillow BILINEAR): torchvision's default for ImageNet.
    Bilinear,
    /// Catmull-Rom (Pillow BICUBIC).
    Bicubic,
    /// Lanczos, a = 3 (Pillow LANCZOS).
    Lanczos3,
});
pipeline::value_enum!(PixelFilter => pipeline::format::shard::PixelFilter {
    /// Bytes as they are.
    None,
    /// Each byte minus its left neighbour.
    Delta,
});
pipeline::value_enum!(Codec => pipeline::format::shard::Codec {
    /// zstd frames (~155 GB for ImageNet): the loader decompresses.
    Zstd,
    /// Pixels as they are (~250 GB for ImageNet): the loader crops
    /// straight from the page cache, no decode.
    Raw,
});
pipeline::value_enum!(MatchSearch => pipeline::format::shard::MatchSearch {
    /// zstd's own search for the level.
    Full,
    /// Few, long matches and literal Huffman coding kept (level 1 only).
    Sparse,
});
