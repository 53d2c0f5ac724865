//! `value_enum!`: a library enum mirrored as a command-line value, for the
//! binaries. The libraries have no clap; a binary writes
//!
//! ```ignore
//! pipeline::value_enum!(Mode => pipeline::loader::augment::Mode {
//!     /// Help text for `train`.
//!     Train,
//!     Center,
//! });
//! ```
//!
//! and gets `Mode` with clap's `ValueEnum` (the doc comments are its help)
//! and `From<Mode>` for the library's enum. The expansion names
//! `clap::ValueEnum`, so only the calling crate needs clap.

#[macro_export]
macro_rules! value_enum {
    ($(#[$meta:meta])* $name:ident => $lib:path { $($(#[$doc:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name { $($(#[$doc])* $variant,)+ }

        impl From<$name> for $lib {
            fn from(value: $name) -> Self {
                match value { $($name::$variant => Self::$variant,)+ }
            }
        }
    };
}
