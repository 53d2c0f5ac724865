//! User mistakes get one clear line and a non-zero exit (issue 2).
