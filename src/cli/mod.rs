//! The `contentv` command line.
