//! VMDK unit tests.
